// relibd's handle on one relib-worker process: spawns it, talks the worker
// link (commands are written by the sending thread itself when the socket
// takes them; a lone Request reads its own reply, else the Asio loop reads
// replies and completes them, see Request), enforces deadlines
// (each executing call's own, through the flight recorder; control phases';
// a generous backstop per command) and notices the process's death through
// its pidfd.
#ifndef RELIB_DAEMON_WORKER_HANDLE_H_
#define RELIB_DAEMON_WORKER_HANDLE_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "boost/asio/steady_timer.hpp"
#include "common/child_process.h"
#include "common/flight_recorder.h"
#include "common/message_limits.h"
#include "common/temp_dir.h"
#include "daemon/reap_threads.h"
#include "daemon/worker_limits.h"
#include "relib/v1/worker_link.pb.h"

namespace relib::daemon {

struct WorkerOptions {
  std::string worker_path;  // the relib-worker executable
  std::string run_dir;      // parent of the worker's private scratch directory
  std::string log_level = "info";
  // SIGTERM first, SIGKILL this much later, when a deadline kills a worker.
  std::chrono::milliseconds term_grace{200};
  // relibd's gRPC message limit: the worker caps export outputs to fit it,
  // and the link's frames are sized to carry it (common/message_limits.h).
  uint64_t max_message_bytes = common::MegabytesToBytes(common::kDefaultMaxMessageMb);
  // The largest key plus value relibd's state store can ever keep for one
  // module: the worker refuses larger saves itself.
  uint64_t max_state_bytes = uint64_t{64} << 20;
  // What the worker does when module code frees memory it does not own:
  // "abort" (die blamed on the module) or "leak" (refuse the free, log it).
  std::string invalid_free = "abort";
  // relibd runs as root: the user the worker runs as (supplementary groups
  // dropped, PR_SET_NO_NEW_PRIVS). Unset: relibd's own user.
  std::optional<common::SpawnOptions::Credentials> run_as;
  // Resource limits per isolation group (--worker-limit).
  WorkerLimitTable limits;
  // Where a dead worker's reap is waited for off the io thread; must outlive
  // every worker and be destroyed before the io_context. Unset: the io thread
  // waits for the reap itself.
  ReapThreads* reap_threads = nullptr;
};

// How a worker ended, for the supervisor's restart decisions.
struct WorkerExit {
  std::string reason;          // human-readable, names signal/code, module and phase
  std::string blamed_module;   // module whose code was running (crash or overrun), or ""
  bool ready = false;          // the worker had said hello: it started, then died
};

class WorkerHandle : public std::enable_shared_from_this<WorkerHandle> {
 public:
  using ReplyCallback = std::function<void(absl::StatusOr<v1::link::Reply>)>;
  struct Callbacks {
    // A log line a module sent through the host API (io thread).
    std::function<void(pid_t, const v1::link::Log&)> on_log;
    // Live resources per module (io thread).
    std::function<void(pid_t, const v1::link::Usage&)> on_usage;
    // A module's state checkpoint (io thread). The status returned is the
    // module's answer: OK only once the value is kept. Unset: the worker's
    // saves are refused.
    std::function<absl::Status(pid_t, const v1::link::SaveState&)> on_save_state;
    // A module handed over an fd (io thread); answered like on_save_state.
    std::function<absl::Status(pid_t, const v1::link::StoreFd&, common::UniqueFd)> on_store_fd;
    // The worker said hello: it is up and speaks the link (io thread).
    std::function<void(pid_t)> on_ready;
    // The process ended and has been reaped (io thread). Called exactly once.
    std::function<void(pid_t, const WorkerExit&)> on_exit;
    // Deadline of `phase` for `module` (io thread); zero = none.
    std::function<std::chrono::milliseconds(const std::string& module, common::Phase phase)> phase_deadline;
  };

  // Spawns the worker with no inherited fds but its end of the link, under
  // `limits` (the group's: WorkerLimitTable::For). `group` names the
  // isolation group in logs ("spare" for a spare worker, see AssignGroup).
  static absl::StatusOr<std::shared_ptr<WorkerHandle>> Start(boost::asio::io_context& io,
                                                             const WorkerOptions& options, std::string group,
                                                             WorkerLimits limits, Callbacks callbacks);
  ~WorkerHandle();

  // Thread-safe. Sends `command` (its id is assigned here) from the calling
  // thread. `done` runs once, on the io thread (or on the calling thread if
  // the worker is already gone), with the worker's reply, with
  // DEADLINE_EXCEEDED after `deadline` (a backstop: the worker is then
  // killed, a hung worker cannot be trusted), or with UNAVAILABLE if the
  // worker died first. `what` names the command for error messages ("call
  // 'greet' of module 'hello'").
  // `fds` go to the worker on the fd channel right before the command, in
  // order (the command's fd_keys name them).
  void Send(v1::link::ToWorker command, std::string what, std::chrono::milliseconds deadline, ReplyCallback done,
            std::vector<common::UniqueFd> fds = {});

  // Blocking form of Send for threads other than the io thread. A lone
  // waiting thread (no other Request waited lately) reads the link itself
  // and the io thread is not woken for it (its own reply then costs no
  // thread hop); frames other than replies to blocked Requests still go to
  // the io thread, in order.
  // `tail`, if not empty, is appended to the command's CallCommand.input on
  // the wire without being copied (REQUIRES: a call command whose input is
  // empty; `tail` stays valid until this returns).
  // `sent`, if set, runs on this thread once the command is written or
  // queued (or failed), before the wait for the reply: work the caller can
  // do while the worker is busy.
  absl::StatusOr<v1::link::Reply> Request(v1::link::ToWorker command, std::string what,
                                          std::chrono::milliseconds deadline,
                                          std::vector<common::UniqueFd> fds = {}, std::string_view tail = {},
                                          const std::function<void()>& sent = {});

  // Thread-safe; not on the io thread. Asks the worker for its modules'
  // usage (answered by its link reader, never behind calls) and waits at
  // most `timeout` for the answer, which goes to Callbacks::on_usage like
  // any usage. False if none came in time.
  bool PollUsage(std::chrono::milliseconds timeout);

  // Thread-safe. Closes the link so the worker exits on its own; SIGKILL if it
  // is still alive after `grace`.
  void Stop(std::chrono::milliseconds grace);

  // A spare worker now serves `group`: its log lines say so from here on.
  // Thread-safe.
  void AssignGroup(std::string group);

  pid_t pid() const { return pid_; }
  // The worker's private scratch directory (module copies live there).
  const std::string& scratch_dir() const { return scratch_.path(); }
  // A number never returned before by this handle: names a file placed in
  // the scratch directory. Thread-safe.
  uint64_t NextPlacementId() { return next_placement_id_.fetch_add(1) + 1; }
  // The limits it was started with; never change.
  const WorkerLimits& limits() const { return limits_; }
  bool alive() const { return alive_.load(); }
  int64_t started_at_unix_ms() const { return started_at_unix_ms_; }

 private:
  struct Pending {
    ReplyCallback done;
    std::string what;
    std::chrono::steady_clock::time_point backstop;  // max(): none
    // `done` may run on any thread (a blocked Request's): a reader other
    // than the io thread completes it in place.
    bool any_thread = false;
  };
  // A thread blocked in Request.
  // (Its own mutex: completing one never contends with the link's. Shared
  // with its reply callback, which notifies after letting go of the mutex:
  // a thread woken under it would only block on it again.)
  struct Waiter {
    std::mutex mutex;
    std::condition_variable wake;
    bool done ABSL_GUARDED_BY(mutex) = false;
    bool leading ABSL_GUARDED_BY(mutex) = false;  // it holds the read token
    absl::StatusOr<v1::link::Reply> reply ABSL_GUARDED_BY(mutex);
  };
  // What a read of the link found.
  enum class ReadResult { kDrained, kEnded };

  WorkerHandle(boost::asio::io_context& io, common::ChildProcess process, common::TempDir scratch,
               common::FlightRecorder recorder, common::UniqueFd link, common::UniqueFd link_watch,
               common::UniqueFd fd_channel, std::string group, const WorkerOptions& options, Callbacks callbacks);

  void SendCommand(v1::link::ToWorker command, std::string what, std::chrono::milliseconds deadline,
                   ReplyCallback done, bool any_thread, std::vector<common::UniqueFd> fds, std::string_view tail);

  // The read side. Exactly one thread at a time holds the read token
  // (reading_) and reads: the io thread when the link is readable and nobody
  // reads, or a thread blocked in Request that is the only one blocked (and
  // none overlapped lately) and found nobody reading (it leads until its own reply came or another
  // Request began; replies it reads for others are completed in place).
  // Token holder: reads what the socket has (never blocks) and delivers
  // every complete frame. kEnded: EOF, an error or a protocol error (the io
  // thread is told, in order after the frames).
  ReadResult ReadAvailable(bool on_io_thread);
  // Token holder: one frame. A reply to a blocked Request completes here when
  // nothing handed to the io thread is still undispatched; everything else
  // goes to the io thread in order.
  void Deliver(v1::link::FromWorker message, bool on_io_thread);
  // The calling thread (not the io thread) reads until `waiter` is answered
  // or reading ended. REQUIRES: it holds the read token.
  void Lead(Waiter& waiter);
  // Gives up the read token unless the socket has unread bytes (then false:
  // keep reading). `look_for_more` false: the holder's last recv came back
  // short, so the socket was empty a moment ago; it is not asked again (what
  // came since is reported by the watch giving the token back re-adds).
  bool ReleaseReadLocked(bool look_for_more = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Gives up the read token at once: the io thread watches the link again,
  // and a close deferred while somebody read happens now.
  void GiveReadingBackLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A write to the link failed with `error` (not EAGAIN/EINTR): the worker
  // is taken as dying and the link as closed.
  void LinkWriteFailedLocked(int error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Makes the Request leading the read side look again (eventfd).
  void WakeLeader();
  // Sets what wakes the io thread on the link (link_watch_'s interest):
  // readable unless a Request reads, writable while writes are queued.
  void WatchLinkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // io thread: writes what the queue holds while the socket takes it.
  void FlushWritesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // io thread: closes the link's descriptor (no thread reads it).
  void CloseLinkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Token holder saw the end of the link: `why` and `eof` go to OnReadEnded on
  // the io thread, after the frames handed there before.
  void EndReading(boost::system::error_code ec, std::string protocol_error);

  // All below run on the io thread.
  void StartIo();
  // Waits for link_watch_ (the link readable or writable as
  // WatchLinkLocked chose); exactly one such wait is armed at a time.
  void ArmRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The armed wait fired (or the start): flushes queued writes, then reads
  // if no other thread does, then waits again.
  void OnLinkReady();
  void OnReadEnded(const boost::system::error_code& ec, const std::string& protocol_error);
  void Dispatch(v1::link::FromWorker& message);
  // Hands the usage a control command's reply carries to on_usage, before
  // the reply itself goes to its caller. Any thread.
  void ApplyReplyUsage(const v1::link::Reply& reply);
  // Answers the worker's host request `request_id` (save_state, store_fd).
  void AnswerHostCall(uint64_t request_id, const absl::Status& status);
  // Any thread. Writes one frame: directly if the socket takes it now and
  // nothing is queued before it, else queued for the io thread.
  // `tail` follows `frame` on the wire (one sendmsg).
  void WriteLocked(std::string frame, std::string_view tail = {}) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Write(std::string frame);
  // Any thread: makes sure the watchdog runs (it stops after a second with
  // nothing in flight).
  void WatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Check();
  void OnDeadline(uint64_t id);
  void OnLinkClosed(const boost::system::error_code& ec);
  void Kill(const std::string& why);
  void OnProcessExit();
  // Reaps the dead worker once its last thread is gone (waited for on a
  // thread of its own), then kills what escaped it and came to relibd.
  void ReapLater();
  // Set while a dead worker awaits its reap; the commands it left unanswered
  // get `deferred_failure_` then (io thread only).
  bool reap_pending_ = false;
  // Under mutex_: set by Finish while the reap is pending, so commands that
  // still arrive are answered with the others once the worker is reaped.
  bool answer_after_reap_ = false;
  std::optional<std::string> deferred_failure_;
  void Finish();
  void Watch();
  // Updates peak_address_space_ from /proc/<pid>/statm.
  void SampleAddressSpace();
  // SIGTERM now, SIGKILL after the grace.
  void Terminate(const std::string& why, const std::string& blamed_module);
  void FailAllPending(const std::string& reason);

  boost::asio::io_context& io_;
  common::ChildProcess process_;
  common::TempDir scratch_;
  std::atomic<uint64_t> next_placement_id_{0};
  common::FlightRecorder recorder_;
  std::string group_;  // io thread only (AssignGroup posts there)
  const WorkerOptions options_;
  Callbacks callbacks_;
  const pid_t pid_;
  const int64_t started_at_unix_ms_;
  std::atomic<bool> alive_{true};

  // The link's socket. It is never registered with Asio: Asio's reactor
  // watches every descriptor for input (edge-triggered) and would wake the
  // io thread for each reply, also for one a Request reads itself. The io
  // thread watches link_watch_ instead, an epoll set holding only the link,
  // whose interest WatchLinkLocked turns off while a Request reads.
  common::UniqueFd link_ ABSL_GUARDED_BY(mutex_);
  const int link_fd_;  // link_'s descriptor, for readers and writers on any thread
  boost::asio::posix::stream_descriptor link_watch_;
  const int link_watch_fd_;  // link_watch_'s epoll set, changed by any thread (WatchLinkLocked)
  common::UniqueFd fd_channel_;
  boost::asio::posix::stream_descriptor pidfd_watch_;
  // Wakes the Request leading the read side (in poll): its reply came by
  // another way (the io thread), or Finish ran.
  common::UniqueFd wake_fd_;
  // Read token holder only: bytes received, [read_begin_, read_end_) not
  // yet delivered.
  std::string read_buffer_;
  size_t read_begin_ = 0;
  size_t read_end_ = 0;
  // Read token holder only: the last ReadAvailable stopped at a recv that
  // filled less than it asked for (not at EAGAIN or the end).
  bool read_short_ = false;

  // Shared between the io thread and senders.
  mutable std::mutex mutex_;
  std::deque<std::string> write_queue_ ABSL_GUARDED_BY(mutex_);
  size_t write_offset_ ABSL_GUARDED_BY(mutex_) = 0;  // bytes of write_queue_.front() written
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;  // the io thread drains write_queue_
  bool reading_ ABSL_GUARDED_BY(mutex_) = false;  // the read token is held
  bool request_reads_ ABSL_GUARDED_BY(mutex_) = false;  // ...by a Request (Lead)
  uint32_t watched_events_ ABSL_GUARDED_BY(mutex_) = 0;  // link_watch_'s interest now
  // EOF or an error was read: nobody reads any more.
  bool read_ended_ ABSL_GUARDED_BY(mutex_) = false;
  // Frames handed to the io thread and not yet dispatched there: while
  // any are, later frames go there too (order is kept).
  int frames_to_io_ ABSL_GUARDED_BY(mutex_) = 0;
  // Threads in Request waiting for their reply.
  int blocked_requests_ ABSL_GUARDED_BY(mutex_) = 0;
  // When two Requests last waited at once.
  std::chrono::steady_clock::time_point last_overlap_ ABSL_GUARDED_BY(mutex_);
  // Finish ran while a Request read: it closes the link when it lets go.
  bool close_deferred_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  std::map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mutex_);
  // Usage requests waiting for their answer (see PollUsage).
  std::map<uint64_t, std::shared_ptr<std::promise<void>>> usage_waiters_ ABSL_GUARDED_BY(mutex_);
  // Killed or exited: commands are not written any more, Finish answers them.
  bool dying_ ABSL_GUARDED_BY(mutex_) = false;
  // Finish() ran: the link is closed; exit_reason_ says why.
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
  bool watching_ ABSL_GUARDED_BY(mutex_) = false;
  std::chrono::steady_clock::time_point idle_since_ ABSL_GUARDED_BY(mutex_);
  // Why the daemon killed the worker, if it did.
  std::optional<std::string> kill_reason_;
  // Stop() closed the link on purpose; EOF from the worker is expected.
  bool stopping_ = false;
  std::unique_ptr<boost::asio::steady_timer> stop_timer_;
  std::unique_ptr<boost::asio::steady_timer> link_closed_timer_;
  boost::asio::steady_timer watchdog_;
  std::unique_ptr<boost::asio::steady_timer> kill_timer_;
  std::unique_ptr<boost::asio::steady_timer> drain_timer_;
  // Set once the process is reaped; Finish() runs when the link is drained.
  std::optional<common::ExitStatus> exit_status_;
  bool link_eof_ = false;
  bool finished_ = false;
  bool killed_by_deadline_ = false;
  bool ready_ = false;  // hello received
  std::string exit_reason_ ABSL_GUARDED_BY(mutex_);  // set by Finish()
  std::string blamed_module_;
  // This worker's limits, and the largest address space it was seen using
  // (sampled by the watchdog when a memory limit is set).
  WorkerLimits limits_;
  uint64_t peak_address_space_ = 0;
  uint64_t last_heartbeat_ = 0;
  int64_t heartbeat_changed_ns_ = 0;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_WORKER_HANDLE_H_
