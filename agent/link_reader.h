// The reading side of the worker link: reads every frame relibd sends,
// offers each command to a dispatcher first (calls and usage requests are
// handled as they arrive, see Agent), queues the rest (lifecycle commands)
// in order for the control thread, and hands relibd's answers to host-API
// requests (save_state, store_fd) to the threads waiting for them.
// Leader/follower: whoever holds the read token reads. An idle executor
// thread may hold it while it waits (Lead), so that a call for it wakes that
// thread alone and runs there; otherwise the reader thread reads.
// Writing stays with DaemonLink::Send, which serialises senders.
#ifndef RELIB_AGENT_LINK_READER_H_
#define RELIB_AGENT_LINK_READER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/daemon_link.h"
#include "common/unique_fd.h"
#include "relib/v1/worker_link.pb.h"

namespace relib::agent {

class LinkReader {
 public:
  // Runs on the thread holding the read token for every command; returns
  // true if it took the command (it must not block for long: frames wait
  // behind it).
  using Dispatcher = std::function<bool(v1::link::ToWorker& command)>;

  // Starts reading `link`, which must outlive the reader (and so must what
  // `dispatch` uses). Nobody else may read the link's frames (the fd channel
  // stays the control thread's).
  explicit LinkReader(DaemonLink& link, Dispatcher dispatch = nullptr);
  // Stops reading (shuts the link's read side down) and joins the thread;
  // requests still waiting get UNAVAILABLE. REQUIRES: no Lead in progress.
  ~LinkReader();
  LinkReader(const LinkReader&) = delete;
  LinkReader& operator=(const LinkReader&) = delete;

  // The next command, waiting at most `timeout`; std::nullopt if none came.
  // Once reading has ended, the commands already queued are still handed
  // out, then: UNAVAILABLE when relibd closed the link (an orderly end),
  // or the error that ended reading. Meant for one command thread.
  absl::StatusOr<std::optional<v1::link::ToWorker>> NextCommand(std::chrono::milliseconds timeout);

  // Thread-safe. A new request id; call before sending the request so that
  // an answer arriving at once is kept for Await.
  uint64_t Expect();
  // Thread-safe. Waits at most `timeout` for relibd's answer to request `id`
  // and forgets `id`. Returns the status relibd answered; DEADLINE_EXCEEDED
  // if none came in time; UNAVAILABLE if the link ended first.
  absl::Status Await(uint64_t id, std::chrono::milliseconds timeout);
  // Thread-safe. Forgets `id` (its request could not be sent).
  void Forget(uint64_t id);

  enum class LeadResult {
    kBusy,   // another thread held the read token: nothing was read
    kLed,    // read until done() said so; the token is let go
    kEnded,  // reading has ended (link closed or broken): do not lead again
  };
  // Thread-safe; for a thread about to wait for work (one at a time leads).
  // Takes the read token if nobody holds it and reads, handing every frame
  // to the dispatcher on this thread, until done() returns true (checked
  // after each batch of frames and after Recall); then, unless its last
  // read came back short (the socket was empty then), reads what the socket
  // holds, and lets the token go: the watch turned back on reports what
  // came in since, and the reader thread reads it. While a thread leads,
  // the reader thread is not woken by frames.
  LeadResult Lead(const std::function<bool()>& done);
  // Thread-safe. Makes the thread in Lead, if any, check done() now.
  void Recall();

 private:
  // The reader thread: reads whenever frames come and nobody leads.
  void Loop();
  enum class DrainResult { kDrained, kEnded };
  // Token holder: reads what the socket has (never blocks) and handles every
  // complete frame. kEnded: reading ended (End was called).
  DrainResult Drain(bool leading);
  // Token holder: one frame to the dispatcher, the command queue or a waiter.
  void Handle(v1::link::ToWorker& frame);
  // Reading ended with `why`: waiting requests fail, NextCommand reports it.
  void End(const absl::Status& why);
  // Token holder: lets the token go unless the socket has unread bytes
  // (false: read them first); turns the reader thread's watch back on.
  // `look_for_more` false: the holder's last recv came back short, so the
  // socket was empty a moment ago; it is not asked again (what came since
  // is reported by the watch turned back on, and read by the reader thread).
  bool ReleaseLocked(bool look_for_more = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(token_mutex_);
  // Turns the reader thread's watch of the link off (a thread leads) or on.
  void WatchLocked(bool on) ABSL_EXCLUSIVE_LOCKS_REQUIRED(token_mutex_);

  DaemonLink& link_;
  const Dispatcher dispatch_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<v1::link::ToWorker> commands_ ABSL_GUARDED_BY(mutex_);
  // Requests waiting for relibd; the answer once it came.
  std::map<uint64_t, std::optional<absl::Status>> answers_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  // Why reading stopped (UNAVAILABLE for relibd closing the link).
  std::optional<absl::Status> ended_ ABSL_GUARDED_BY(mutex_);

  // The read token.
  std::mutex token_mutex_;
  bool token_held_ ABSL_GUARDED_BY(token_mutex_) = false;
  bool watching_ ABSL_GUARDED_BY(token_mutex_) = true;  // the reader thread's epoll sees the link
  std::atomic<bool> reading_ended_{false};
  // The reader thread's epoll set (the link, edge-triggered; stop_fd_).
  common::UniqueFd epoll_;
  common::UniqueFd stop_fd_;    // eventfd: wakes the reader thread once reading ended
  common::UniqueFd recall_fd_;  // eventfd: wakes the thread in Lead
  // Token holder only: bytes received, [begin_, end_) not yet handled.
  std::string buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
  // Token holder only: the last Drain stopped at a recv that filled less
  // than it asked for (not at EAGAIN or the end).
  bool drained_short_ = false;
  std::thread thread_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_LINK_READER_H_
