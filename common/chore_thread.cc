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
  RunDeferredLocked();  // no other thread left: the lock is not needed
  for (auto& chore : chores_) chore();
}

void ChoreThread::StartLocked() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
}

void ChoreThread::RunDeferredLocked() {
  for (auto& chore : deferred_) chores_.push_back(std::move(chore));
  deferred_.clear();
  due_.reset();
}

void ChoreThread::Post(std::function<void()> chore) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    RunDeferredLocked();
    chores_.push_back(std::move(chore));
    StartLocked();
  }
  wake_.notify_one();
}

void ChoreThread::Kick() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (deferred_.empty()) return;
    RunDeferredLocked();
  }
  wake_.notify_one();
}

void ChoreThread::PostDeferred(std::function<void()> chore, std::chrono::milliseconds delay) {
  bool notify;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    deferred_.push_back(std::move(chore));
    const Clock::time_point due = Clock::now() + delay;
    if (!due_ || due < *due_) due_ = due;
    StartLocked();
    // A thread in a timed wait that ends before this deadline sees it when
    // it wakes: only an untimed sleep, or a later wake-up, needs a notify.
    notify = sleeping_untimed_ || (waiting_until_ && due < *waiting_until_);
  }
  if (notify) wake_.notify_one();
}

void ChoreThread::Run() {
  ::pthread_setname_np(::pthread_self(), name_);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (!chores_.empty()) {
      std::function<void()> chore = std::move(chores_.front());
      chores_.pop_front();
      lock.unlock();
      chore();
      lock.lock();
      linger_until_ = Clock::now() + kLinger;
      continue;
    }
    const Clock::time_point now = Clock::now();
    if (due_ && *due_ <= now) {
      RunDeferredLocked();
      continue;
    }
    std::optional<Clock::time_point> until = due_;
    if (linger_until_ > now && (!until || linger_until_ < *until)) until = linger_until_;
    if (until) {
      waiting_until_ = until;
      wake_.wait_until(lock, *until);
      waiting_until_.reset();
    } else {
      sleeping_untimed_ = true;
      wake_.wait(lock);
      sleeping_untimed_ = false;
    }
  }
}

}  // namespace relib::common
