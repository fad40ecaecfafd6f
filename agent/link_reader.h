// The one reader of the worker link: a thread that reads every frame relibd
// sends, offers each command to a dispatcher first (calls and usage requests
// are handled as they arrive, see Agent), queues the rest (lifecycle
// commands) in order for the control thread, and hands relibd's answers to
// host-API requests (save_state, store_fd) to the threads waiting for them.
// Writing stays with DaemonLink::Send, which serialises senders.
#ifndef RELIB_AGENT_LINK_READER_H_
#define RELIB_AGENT_LINK_READER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/daemon_link.h"
#include "relib/v1/worker_link.pb.h"

namespace relib::agent {

class LinkReader {
 public:
  // Runs on the reader thread for every command; returns true if it took
  // the command (it must not block for long: frames wait behind it).
  using Dispatcher = std::function<bool(v1::link::ToWorker& command)>;

  // Starts reading `link`, which must outlive the reader (and so must what
  // `dispatch` uses). Nobody else may read the link's frames (the fd channel
  // stays the control thread's).
  explicit LinkReader(DaemonLink& link, Dispatcher dispatch = nullptr);
  // Stops reading (shuts the link's read side down) and joins the thread;
  // requests still waiting get UNAVAILABLE.
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

 private:
  void Loop();

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
  std::thread thread_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_LINK_READER_H_
