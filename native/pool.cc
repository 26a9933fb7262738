// Pool (pool.h): one mutex, a generation counter per run. A pool thread that has
// finished its part spins on the counter for up to SPIN, then sleeps on a
// condition variable; the caller, once its own part is done, spins on the
// count of parts still running for up to SPIN, then sleeps. The spin is bounded
// because the cores are shared with the JavaScript threads and other workers.
#include "pool.h"

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace syncbn {

namespace {
constexpr auto SPIN = std::chrono::microseconds(200);

inline void relax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or SPIN has passed; whether done() held.
template <class F>
bool spinUntil(const F& done) {
  const auto end = std::chrono::steady_clock::now() + SPIN;
  for (int k = 0;; k++) {
    if (done()) return true;
    for (int i = 0; i < 32; i++) relax();
    if ((k & 15) == 15 && std::chrono::steady_clock::now() > end) return done();
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
    spinUntil([&] { return generation_.load(std::memory_order_acquire) != seen; });
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
  if (!spinUntil([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }
  std::lock_guard<std::mutex> lock(mu_);
  job_ = nullptr;
}

}  // namespace syncbn
