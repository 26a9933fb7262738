// A persistent pool of compute threads for the conv passes (passes.cc) and the
// step kernels (norm.cc, elementwise.cc): started on first need, grown to the
// largest part count asked for, kept between passes (one per Node environment,
// addon.cc), joined when it is destroyed. Not a task queue: run() hands part p to
// thread p and waits for all of them. Between passes a thread spins a short while
// (pool.cc) before it sleeps: a pass follows another within microseconds, and waking
// a sleeping thread costs tens of microseconds on a virtual machine's idle core.
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
  // part(0..parts−1): part 0 on the calling thread, part p on pool thread p; returns when every part has.
  void run(int parts, const std::function<void(int)>& part);
  int threads() const { return int(workers_.size()); }

 private:
  void work(int index);
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;  // pool thread p is workers_[p − 1]
  const std::function<void(int)>* job_ = nullptr;  // job_, parts_: written under mu_, read under it
  int parts_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};  // bumped under mu_; read without it while spinning
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> workerSpin_{200000}, callerSpin_{200000};  // pool.cc spinUntil's budgets, ns
};

// The threads a pass may split its work over: the pool and how many (1, or no pool: the calling thread alone).
struct Threads {
  Pool* pool = nullptr;
  int count = 1;
};

// f(lo, hi) over [0, total) in at most t.count parts of at least `grain` items each, every boundary a multiple of
// `align`, part 0 on the calling thread. For passes whose items are independent (the bits do not depend on the split).
template <class F>
void splitOver(const Threads& t, int64_t total, int64_t grain, int64_t align, const F& f) {
  const int64_t parts = t.pool ? std::min<int64_t>(t.count, total / std::max<int64_t>(grain, 1)) : 1;
  if (parts <= 1) {
    f(int64_t(0), total);
    return;
  }
  const auto edge = [&](int64_t p) { return p == parts ? total : total * p / parts / align * align; };
  t.pool->run(int(parts), [&](int p) {
    const int64_t lo = edge(p), hi = edge(p + 1);
    if (lo < hi) f(lo, hi);
  });
}

}  // namespace syncbn
