// Pool (pool.h): one mutex, a generation counter per run. A pool thread that has
// finished its part spins on the counter for a while, then sleeps on a
// condition variable; the caller, once its own part is done, spins on the count
// of parts still running, then sleeps. Each spin is bounded by an adaptive budget
// (at most 200 µs), because the cores are shared with the JavaScript threads and
// other workers.
#include "pool.h"

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace syncbn {

namespace {
constexpr int64_t MAX_SPIN_NS = 200000;

// A pause, then the core to any other thread that wants it (a spinning thread must not keep the one it waits for off the core).
inline void relax() {
#if defined(__x86_64__)
  for (int i = 0; i < 16; i++) _mm_pause();
#endif
  std::this_thread::yield();
}

int64_t nowNs() { return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Spins until done() or `budget` ns have passed; whether done() held. The budget adapts to what waiting has
// been like: it doubles (to MAX_SPIN_NS) after a spin that ended in time and halves after one that did not, so on
// cores shared with other busy processes (where the thread waited for is often off its core) the spin fades out.
template <class F>
bool spinUntil(std::atomic<int64_t>& budget, const F& done) {
  const int64_t b = budget.load(std::memory_order_relaxed);
  if (done()) return true;
  const int64_t start = nowNs();
  for (int k = 1;; k++) {
    relax();
    if (done()) {
      budget.store(std::min(MAX_SPIN_NS, 2 * b + 1000), std::memory_order_relaxed);
      return true;
    }
    if ((k & 7) == 0 && nowNs() - start > b) {
      budget.store(b / 2, std::memory_order_relaxed);
      return false;
    }
  }
}
}  // namespace

Pool::~Pool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_++;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void Pool::work(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    spinUntil(workerSpin_, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= parts_) continue;
      job = job_;
    }
    (*job)(index);
    if (pending_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      done_.notify_one();
    }
  }
}

void Pool::run(int parts, const std::function<void(int)>& part) {
  if (parts <= 1) {
    part(0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (int(workers_.size()) < parts - 1) workers_.emplace_back(&Pool::work, this, int(workers_.size()) + 1);
    job_ = &part;
    parts_ = parts;
    pending_ = parts - 1;
    generation_++;
  }
  wake_.notify_all();
  part(0);
  if (!spinUntil(callerSpin_, [&] { return pending_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }
  std::lock_guard<std::mutex> lock(mu_);
  job_ = nullptr;
}

}  // namespace syncbn
