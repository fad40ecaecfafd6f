// A thread for file-system chores that no caller waits for (removing
// replaced copies, making inodes ahead), off the threads that serve requests.
#ifndef RELIB_COMMON_CHORE_THREAD_H_
#define RELIB_COMMON_CHORE_THREAD_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

namespace relib::common {

// Runs posted chores one at a time, in order, on its own thread. Why not the
// io thread: the io thread reads the workers' replies, and a chore of tens
// of µs (creating or unlinking an ext4 inode) in front of a reply delayed it
// by that much. The priority stays normal: at nice 19, on a loaded machine,
// the spare inodes were not ready when the next reload wanted them and the
// reload made its own, on its critical path (measured).
//
// A deferred chore waits for the next Post (or Kick), or `delay`, whichever
// comes first: work that is posted as a reply leaves (when the reply's
// client and relibd's threads need the CPUs) runs when the next request
// starts its own work instead, on the CPU that request leaves free. A thread
// that ran a chore waits with a timeout for kLinger afterwards, so a
// deferred chore posted meanwhile with a longer delay wakes nobody; after
// that it sleeps without timers. The thread starts with the first post. The destructor runs what
// is still queued or deferred, then joins. Thread-safe; chores must not post
// to their own ChoreThread once its destructor began.
class ChoreThread {
 public:
  static constexpr std::chrono::milliseconds kLinger{50};

  // `name`: the thread's name (at most 15 characters; a string literal),
  // how traces and tests tell its work from other threads'.
  explicit ChoreThread(const char* name = "chores") : name_(name) {}
  ~ChoreThread();
  ChoreThread(const ChoreThread&) = delete;
  ChoreThread& operator=(const ChoreThread&) = delete;

  // Runs the deferred chores, then `chore`, soon.
  void Post(std::function<void()> chore);
  // Runs the deferred chores soon (nothing if there are none).
  void Kick();
  // Runs `chore` at the next Post or Kick, or `delay` from now at the latest
  // (the earliest deadline of the deferred chores counts).
  void PostDeferred(std::function<void()> chore, std::chrono::milliseconds delay);

 private:
  using Clock = std::chrono::steady_clock;
  void StartLocked();
  void RunDeferredLocked();
  void Run();

  const char* const name_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> chores_;    // ABSL_GUARDED_BY(mutex_)
  std::deque<std::function<void()>> deferred_;  // ABSL_GUARDED_BY(mutex_)
  std::optional<Clock::time_point> due_;        // ABSL_GUARDED_BY(mutex_): deferred_'s deadline
  Clock::time_point linger_until_;              // ABSL_GUARDED_BY(mutex_)
  bool sleeping_untimed_ = false;               // ABSL_GUARDED_BY(mutex_)
  std::optional<Clock::time_point> waiting_until_;  // ABSL_GUARDED_BY(mutex_): a timed wait's end
  bool stopping_ = false;                       // ABSL_GUARDED_BY(mutex_)
  std::thread thread_;                          // started by the first post, under mutex_
};

}  // namespace relib::common

#endif  // RELIB_COMMON_CHORE_THREAD_H_
