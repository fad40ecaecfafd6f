// Per-module executors for export calls: each module gets at most `limit`
// threads of its own (created when calls need them, idle ones kept), a
// bounded queue for calls beyond the limit, and a hold for swaps (reload,
// unload): new calls queue, in-flight ones finish, the module's threads end.
// One idle executor at a time may wait on the worker link itself (see
// SetLinkLeader): a call it reads for its own module runs on it at once,
// without waking another thread.
#ifndef RELIB_AGENT_CALL_SCHEDULER_H_
#define RELIB_AGENT_CALL_SCHEDULER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"

namespace relib::agent {

class CallScheduler {
 public:
  struct Limits {
    int concurrency = 1;          // calls running at once (>= 1)
    size_t max_queued = 256;      // calls waiting beyond those
  };
  // One call. `run` is invoked exactly once on one of the module's threads:
  // with OK to run the call, or with why it will not run (waited longer
  // than `queue_deadline` for a free slot, or the module went away).
  struct Job {
    std::function<void(const absl::Status&)> run;
    std::chrono::milliseconds queue_deadline{0};  // 0: no bound
  };

  // How a Lead ended (LinkReader::LeadResult).
  enum class LeadOutcome { kBusy, kLed, kEnded };
  // Reads the link on the calling thread until `done()`; see LinkReader::Lead.
  using LeadFn = std::function<LeadOutcome(const std::function<bool()>& done)>;

  CallScheduler() = default;
  // Shutdown().
  ~CallScheduler();
  // Thread-safe. Waits for running calls and ends every thread; queued calls
  // are told UNAVAILABLE, and so are later Submits.
  void Shutdown();
  CallScheduler(const CallScheduler&) = delete;
  CallScheduler& operator=(const CallScheduler&) = delete;

  // Before any Configure. An idle executor thread calls `lead` (one thread
  // at a time) instead of sleeping; a call Submitted from inside it for that
  // thread's own module, when it may start at once, runs on that thread
  // (done() then turns true). `recall` makes the leading thread look at
  // done() again (its module needs it: work queued, a hold, shutdown).
  void SetLinkLeader(LeadFn lead, std::function<void()> recall);

  // Thread-safe (control thread). Creates `module`'s gate or sets its limits.
  void Configure(const std::string& module, Limits limits);
  // Thread-safe (control thread). Drops `module`'s gate; calls still queued
  // get `why`. REQUIRES: Hold(module) returned (no call runs).
  void Remove(const std::string& module, const absl::Status& why);

  // Thread-safe (link reader). Queues `job` or starts it at once. Errors, at
  // once and without running `job`: NOT_FOUND (no such module),
  // RESOURCE_EXHAUSTED (its queue is full; the message names the module).
  absl::Status Submit(const std::string& module, Job job);

  // Thread-safe (control thread). New calls of `module` queue from now on;
  // returns once its running calls finished and its threads ended (so their
  // thread_local destructors of the module ran). Other modules' calls go on.
  // No-op for an unknown module.
  void Hold(const std::string& module);
  // Ends a Hold: queued calls run (their queue time restarts: time held
  // does not count against queue_deadline).
  void Release(const std::string& module);

 private:
  struct Queued {
    Job job;
    std::chrono::steady_clock::time_point since;
  };
  struct Gate {
    std::string name;
    Limits limits;
    std::deque<Queued> queue;
    int running = 0;
    int idle = 0;          // threads waiting for work
    int wakeups = 0;       // notified idle threads that have not woken yet
    int starting = 0;      // threads created that have not looked for work yet
    bool held = false;
    bool stopping = false;  // threads end when they find nothing allowed to run
    bool leading = false;   // one of its idle threads reads the link (not counted in idle)
    std::atomic<bool> recall{false};  // that thread must stop reading and look at the gate
    std::vector<std::thread> threads;
    std::condition_variable work;
    std::condition_variable drained;
  };

  // Starts queued calls of `gate` as its limit allows: creates threads up to
  // the limit, and returns how many idle threads the caller must wake with
  // Wake once it let go of mutex_ (a thread woken under the lock would
  // only block on it again: two context switches instead of one).
  // REQUIRES: mutex_ held.
  [[nodiscard]] int Dispatch(const std::shared_ptr<Gate>& gate) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Wakes `count` idle threads of `gate`. REQUIRES: mutex_ not held.
  static void Wake(Gate& gate, int count);
  // Makes `gate`'s leading thread, if any, come back to it.
  void RecallLocked(Gate& gate) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The executor thread leading the link: its gate, and the call it took
  // for itself (counted in running already).
  struct Leading {
    Gate* gate;
    std::optional<Queued> taken;
  };
  static thread_local Leading* leading_;
  void ThreadLoop(std::shared_ptr<Gate> gate);
  bool CanStart(const Gate& gate) const { return !gate.held && !gate.queue.empty() && gate.running < gate.limits.concurrency; }
  // Ends `gate`'s threads after its calls finished. Takes the lock.
  void Drain(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Gate>& gate);

  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Gate>> gates_ ABSL_GUARDED_BY(mutex_);
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;
  LeadFn lead_ ABSL_GUARDED_BY(mutex_);
  std::function<void()> recall_;
  bool link_led_ ABSL_GUARDED_BY(mutex_) = false;  // an executor thread is in lead_
  bool lead_ended_ ABSL_GUARDED_BY(mutex_) = false;  // lead_ said the link ended
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_CALL_SCHEDULER_H_
