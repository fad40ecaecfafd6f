// The threads that wait for dead workers' last threads before their reap,
// owned so that relibd's shutdown joins them before the io_context they post
// to is destroyed.
#ifndef RELIB_DAEMON_REAP_THREADS_H_
#define RELIB_DAEMON_REAP_THREADS_H_

#include <functional>
#include <list>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"

namespace relib::daemon {

// Thread-safe. Declare it after the io_context its tasks post to (so it is
// destroyed, and its threads joined, before that io_context) and keep it alive
// while any WorkerHandle may call Run.
class ReapThreads {
 public:
  ReapThreads() = default;
  ReapThreads(const ReapThreads&) = delete;
  ReapThreads& operator=(const ReapThreads&) = delete;
  // Joins every thread: blocks until each task has returned.
  ~ReapThreads();

  // Runs `task` on a thread of its own. Threads whose task has returned are
  // joined here, so they do not pile up over a long run.
  void Run(std::function<void()> task);

 private:
  struct Entry {
    std::thread thread;
    bool done = false;  // under mutex_
  };
  void JoinDoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  std::mutex mutex_;
  std::list<Entry> threads_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_REAP_THREADS_H_
