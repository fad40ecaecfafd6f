// The in-worker agent: translates the daemon's commands into ModuleLoader
// operations and answers over the DaemonLink. Embeddable in any main.
//
// Execution model: the link reader hands each call straight to the
// CallScheduler (the module's own executor threads, its concurrency limit
// and bounded queue) and answers usage requests itself; lifecycle commands
// (load, reload, unload) run one at a time, in order, on the thread that
// called Run (the control thread), which holds a module's calls around its
// swap. Replies go back as each command completes. An idle control thread
// waits on the link itself when nobody else does (LinkReader::Lead), so a
// lifecycle command wakes the thread that runs it and no other; it stops
// at the first call it reads, leaving the link to the executors.
#ifndef RELIB_AGENT_AGENT_H_
#define RELIB_AGENT_AGENT_H_

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/call_scheduler.h"
#include "agent/daemon_link.h"
#include "agent/host_services.h"
#include "agent/link_reader.h"
#include "agent/module_loader.h"
#include "common/frame_io.h"


namespace relib::agent {

// Sizes relibd can take, passed to relib-worker by relibd.
struct HostLimits {
  // The link's frame limit (common::LinkFrameLimit of --max-message-mb).
  uint64_t frame_bytes = common::kMaxFramePayloadBytes;
  // The largest key plus value relibd's state store can ever hold for one
  // module (its capacity, or what one load command can carry if less).
  uint64_t state_bytes = uint64_t{64} << 20;
};

class Agent : public HostServices {
 public:
  // `link` (and `recorder`, if not null) must outlive the agent. Module
  // copies go to `scratch_dir`. Starts reading the link (see LinkReader).
  Agent(DaemonLink& link, std::string scratch_dir, common::FlightRecorder* recorder = nullptr,
        HostLimits limits = {});
  // Stops reading, waits for running calls (their host requests fail once
  // reading stopped), then unloads what is loaded.
  ~Agent();

  // Sends Hello, then executes lifecycle commands one at a time on the
  // calling thread (calls run on executor threads meanwhile) until the
  // daemon closes the link (returns OK) or the link fails (returns the
  // error). Sends usage after each lifecycle command and when asked.
  absl::Status Run();

  // Test-only points in the hand-over of lifecycle commands between the
  // token holder and the control thread, for tests that force one ordering
  // of the two. Null in production. Set before Run, never changed during it.
  struct RaceHooks {
    // Dispatch, a lifecycle command: between its two stores (the count and
    // the stop flag).
    std::function<void()> dispatch_between_stores;
    // NextLifecycleCommand: before the stop flag is reset, and right before
    // the control thread leads (the queue looked empty).
    std::function<void()> before_reset;
    std::function<void()> before_lead;
    // Run: the control thread's work after a reply (removing the old copy,
    // making the spare), before it.
    std::function<void()> after_reply;
  };
  void set_race_hooks_for_testing(const RaceHooks* hooks) { race_hooks_ = hooks; }

  // The most bytes one export call may output (see ModuleLoader).
  void set_output_limit(uint64_t bytes) { loader_.set_output_limit(bytes); }

  // HostServices: state and fds are cached here for the modules (filled by
  // each load command); every change goes to relibd, which owns the real
  // stores, and succeeds only once relibd answers that it holds it (waiting
  // at most kHostCallTimeout). RESOURCE_EXHAUSTED, without asking relibd,
  // for a save larger than HostLimits allow.
  absl::Status SaveState(const std::string& module, const std::string& key, std::string_view value) override;
  std::optional<std::string> LoadState(const std::string& module, const std::string& key) override;
  absl::Status StoreFd(const std::string& module, const std::string& key, int fd) override;
  int TakeFd(const std::string& module, const std::string& key) override;

 private:
  void Execute(const v1::link::ToWorker& command, v1::link::Reply& reply);
  // Control thread, idle: the next lifecycle command (waiting as long as it
  // takes), read by this thread itself when nobody else reads the link.
  // First, exactly once each: `send_reply` (the last command's reply), while
  // this thread holds the link if it can (a command that comes right after
  // it then waits for this thread instead of waking the reader thread to
  // queue it), then `after_reply` (the work the reply did not wait for),
  // with the link let go (others' calls and host answers are read).
  // UNAVAILABLE once relibd closed the link, or the error that ended it;
  // the error `send_reply` returned (the reply was not sent), without
  // waiting for a command.
  absl::StatusOr<v1::link::ToWorker> NextLifecycleCommand(const std::function<absl::Status()>& send_reply,
                                                          const std::function<void()>& after_reply);
  // The next command the reader queued, waiting as long as it takes.
  absl::StatusOr<v1::link::ToWorker> NextQueuedCommand();
  // Link reader thread: takes calls (to the scheduler) and usage requests.
  bool Dispatch(v1::link::ToWorker& command);
  // Executor thread: runs `command` (a call) if `admitted`, and replies.
  void RunCall(const v1::link::ToWorker& command, const absl::Status& admitted);
  // Sends `answer`; a failure means the link is gone (the reader ends Run).
  void SendReply(const v1::link::FromWorker& answer);
  // The module's limits for the scheduler; `warnings` gets why an option
  // does not apply.
  static CallScheduler::Limits LimitsFor(const ModuleOptions& options, bool thread_safe,
                                         std::vector<std::string>* warnings);
  // Takes a load command's state and fds into the caches for `module`.
  absl::Status AcceptResources(const std::string& module, const v1::link::LoadCommand& command);
  void DropResources(const std::string& module);
  void ForwardModuleLog(int level, const std::string& module, std::string_view text);
  absl::Status SendUsage(uint64_t request_id = 0);
  // Every loaded module's live resources.
  void FillUsage(v1::link::Usage& usage);

  // A cached value, with the request that saved it: answers may wake their
  // callers in any order, the newest request (relibd's order) wins.
  struct SavedValue {
    std::string bytes;
    uint64_t request = 0;
  };
  struct StoredFd {
    common::UniqueFd fd;
    uint64_t request = 0;
  };
  // Sends `message` as host request (its id set by `set_id`) and waits for
  // relibd's answer.
  template <typename SetId>
  absl::StatusOr<uint64_t> Request(v1::link::FromWorker& message, SetId set_id, int fd = -1);

  DaemonLink& link_;
  common::FlightRecorder* recorder_;
  const HostLimits limits_;
  std::mutex resources_mutex_;
  std::map<std::string, std::map<std::string, SavedValue>> state_;  // guarded by resources_mutex_
  std::map<std::string, std::map<std::string, StoredFd>> fds_;     // guarded by resources_mutex_
  // Held while a host request gets its id and is sent: ids grow in the order
  // relibd sees the requests.
  std::mutex request_order_mutex_;
  // Set by Dispatch for every lifecycle command and call it sees: the
  // control thread, if it leads the link, stops (a lifecycle command is its
  // work; a call's executor leads better, see CallScheduler); for a
  // lifecycle command only after it is counted in commands_queued_. Reset
  // by the control thread before it looks at that count.
  std::atomic<bool> stop_leading_{false};
  // Lifecycle (and unknown) commands Dispatch let the reader queue that the
  // control thread has not taken yet: it leads the link only when there are
  // none (rather than asking the queue with a timed wait).
  std::atomic<int> commands_queued_{0};
  // When Dispatch saw each queued lifecycle command, in queue order (the
  // reader queues what Dispatch let through, one token holder at a time):
  // the start of the reply's handling_micros.
  std::mutex read_times_mutex_;
  std::deque<std::chrono::steady_clock::time_point> read_times_;  // guarded by read_times_mutex_
  // The read time of the command NextQueuedCommand returned last (control thread only).
  std::chrono::steady_clock::time_point read_time_;
  const RaceHooks* race_hooks_ = nullptr;
  ModuleLoader loader_;
  // Destroyed before the loader (its threads call into it) and after the
  // reader (which feeds it).
  CallScheduler scheduler_;
  LinkReader reader_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_AGENT_H_
