#include "daemon/reap_threads.h"

#include <utility>

namespace relib::daemon {

ReapThreads::~ReapThreads() {
  std::list<Entry> all;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    all.swap(threads_);
  }
  for (Entry& entry : all) entry.thread.join();
}

void ReapThreads::Run(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  JoinDoneLocked();
  Entry& entry = threads_.emplace_back();
  // The thread marks its entry done under the lock, which it cannot take
  // before the entry's `thread` has been assigned here.
  entry.thread = std::thread([this, &entry, task = std::move(task)] {
    task();
    std::lock_guard<std::mutex> done_lock(mutex_);
    entry.done = true;
  });
}

void ReapThreads::JoinDoneLocked() {
  for (auto it = threads_.begin(); it != threads_.end();) {
    if (it->done) {
      // Done under the lock means it only has to return from its lambda.
      it->thread.join();
      it = threads_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace relib::daemon
