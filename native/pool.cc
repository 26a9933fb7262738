// Pool (pool.h): one mutex, a generation counter per pass, a shared counter of
// claimed chunks. A pool thread between passes spins on the generation for a
// while, then sleeps on a condition variable; the caller, once no chunk is left
// to claim, spins until the pool threads inside the pass have left, then sleeps.
// Each spin is bounded by an adaptive budget (at most 200 µs), because the cores
// are shared with the JavaScript threads and other workers.
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

void Pool::claim(const std::function<void(int64_t)>& chunk) {
  for (int64_t c; (c = next_.fetch_add(1)) < chunks_;) chunk(c);
}

void Pool::work() {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t)>* job;
    spinUntil(workerSpin_, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (!job_ || helpers_ == 0) continue;  // the pass is over, or has its helpers
      helpers_--;
      active_++;
      job = job_;
    }
    claim(*job);
    if (active_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      done_.notify_one();
    }
  }
}

void Pool::run(int threads, int64_t chunks, const std::function<void(int64_t)>& chunk) {
  if (threads <= 1 || chunks <= 1) {
    for (int64_t c = 0; c < chunks; c++) chunk(c);
    return;
  }
  const int helpers = int(std::min<int64_t>(threads - 1, chunks - 1));
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (int(workers_.size()) < helpers) workers_.emplace_back(&Pool::work, this);
    job_ = &chunk;
    helpers_ = helpers;
    chunks_ = chunks;
    next_ = 0;
    generation_++;
  }
  wake_.notify_all();
  claim(chunk);
  // Every chunk is claimed: close the pass to pool threads not yet in it, then wait for those inside to leave
  // (each leaves once its last chunk has run).
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = nullptr;
    helpers_ = 0;
  }
  const auto left = [&] { return active_.load(std::memory_order_acquire) == 0; };
  if (!spinUntil(callerSpin_, left)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, left);
  }
}

}  // namespace syncbn
