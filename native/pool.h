// A persistent pool of compute threads for the conv passes (passes.cc): started
// on first need, grown to the largest part count asked for, kept between passes
// (one per Node environment, addon.cc), joined when it is destroyed. Not a task
// queue: run() hands part p to thread p and waits for all of them.
#pragma once
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
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace syncbn
