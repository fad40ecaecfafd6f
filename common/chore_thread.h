// A thread for file-system chores that no caller waits for (removing
// replaced copies, making inodes ahead), off the threads that serve requests.
#ifndef RELIB_COMMON_CHORE_THREAD_H_
#define RELIB_COMMON_CHORE_THREAD_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace relib::common {

// Runs posted chores one at a time, in order, on its own thread. Why not the
// io thread: the io thread reads the workers' replies, and a chore of tens
// of µs (creating or unlinking an ext4 inode) in front of a reply delayed it
// by that much. The priority stays normal: at nice 19, on a loaded machine,
// the spare inodes were not ready when the next reload wanted them and the
// reload made its own, on its critical path (measured). The thread starts
// with the first Post and sleeps without timers while there is nothing to
// do. The destructor runs what is still queued, then joins. Post is
// thread-safe; chores must not Post to their own ChoreThread once its
// destructor began.
class ChoreThread {
 public:
  ChoreThread() = default;
  ~ChoreThread();
  ChoreThread(const ChoreThread&) = delete;
  ChoreThread& operator=(const ChoreThread&) = delete;

  void Post(std::function<void()> chore);

 private:
  void Run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> chores_;  // ABSL_GUARDED_BY(mutex_)
  bool stopping_ = false;                     // ABSL_GUARDED_BY(mutex_)
  std::thread thread_;                        // started by the first Post, under mutex_
};

}  // namespace relib::common

#endif  // RELIB_COMMON_CHORE_THREAD_H_
