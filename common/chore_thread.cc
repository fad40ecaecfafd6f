#include "common/chore_thread.h"

#include <pthread.h>

#include <utility>

namespace relib::common {

ChoreThread::~ChoreThread() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  // Whatever the thread left (it stops at once): run here.
  for (auto& chore : chores_) chore();
}

void ChoreThread::Post(std::function<void()> chore) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    chores_.push_back(std::move(chore));
    if (!thread_.joinable()) {
      thread_ = std::thread([this] { Run(); });
      return;
    }
  }
  wake_.notify_one();
}

void ChoreThread::Run() {
  ::pthread_setname_np(::pthread_self(), "chores");
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return stopping_ || !chores_.empty(); });
    if (stopping_) return;
    std::function<void()> chore = std::move(chores_.front());
    chores_.pop_front();
    lock.unlock();
    chore();
    lock.lock();
  }
}

}  // namespace relib::common
