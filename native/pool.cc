// Pool (pool.h): one mutex, a generation counter per run, threads that sleep on a
// condition variable between passes (no spinning: the cores are shared with the
// JavaScript threads and other workers). A pass costs one wake-up per helper.
#include "pool.h"

namespace syncbn {

Pool::~Pool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void Pool::work(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= parts_) continue;
      job = job_;
    }
    (*job)(index);
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_.notify_one();
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
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
}

}  // namespace syncbn
