// A persistent pool of compute threads for the conv passes (passes.cc) and the
// step kernels (norm.cc, elementwise.cc): started on first need, grown to the
// largest thread count asked for, kept between passes (one per Node environment,
// addon.cc), joined when it is destroyed. A pass is a list of chunks whose results
// do not depend on which thread runs them; the calling thread and the woken pool
// threads claim chunks from a shared counter until none is left, so a pool thread
// that is late (asleep, or off its core because other processes use the cores)
// leaves its share to the others instead of holding the pass up. Between passes
// a pool thread spins a short, adaptive while (pool.cc) before it sleeps: passes
// follow each other within microseconds, and waking a sleeping thread costs tens
// of microseconds on a virtual machine's idle core.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace syncbn {

class Pool {
 public:
  Pool() = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool();
  // chunk(0..chunks−1), each once, on the calling thread and up to threads − 1 pool threads; returns when all have run.
  void run(int threads, int64_t chunks, const std::function<void(int64_t)>& chunk);
  int threads() const { return int(workers_.size()); }

 private:
  void work();
  void claim(const std::function<void(int64_t)>& chunk);
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  // The pass: job_, helpers_ (pool threads still allowed to join it), written and read under mu_.
  const std::function<void(int64_t)>* job_ = nullptr;
  int helpers_ = 0;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_{0};                // chunks claimed
  std::atomic<int> active_{0};                  // pool threads inside the pass
  std::atomic<uint64_t> generation_{0};         // bumped under mu_ per pass; read without it while spinning
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> workerSpin_{200000}, callerSpin_{200000};  // pool.cc spinUntil's budgets, ns
};

// The threads a pass may split its work over: the pool and how many (1, or no pool: the calling thread alone).
struct Threads {
  Pool* pool = nullptr;
  int count = 1;
};

// f(lo, hi) over [0, total) in chunks of `grain` items (the last one shorter), each on whichever of t's threads
// claims it. For passes whose items are independent: the bits do not depend on the chunks or the threads.
template <class F>
void splitOver(const Threads& t, int64_t total, int64_t grain, const F& f) {
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (total + grain - 1) / grain;
  if (!t.pool || t.count <= 1 || chunks <= 1) {
    if (total > 0) f(int64_t(0), total);
    return;
  }
  t.pool->run(t.count, chunks, [&](int64_t c) { f(c * grain, std::min(total, (c + 1) * grain)); });
}

}  // namespace syncbn
