// relibd's restart policy as plain bookkeeping, with no processes, threads or
// clocks of its own: which modules a worker's death counts against (blame),
// when a module has crashed too often (intensity), how long to wait before
// restarting a group (backoff), and when relibd cannot start workers at all.
#ifndef RELIB_DAEMON_RECOVERY_H_
#define RELIB_DAEMON_RECOVERY_H_

#include <chrono>
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace relib::daemon {

struct RestartPolicy {
  // A module whose worker died on its account more than `max_restarts` times
  // within `window` is marked failed and not loaded again.
  int max_restarts = 3;
  std::chrono::seconds window{60};
  // Delay before restarting a group's worker: none after a first death (the
  // worker had been stable), `backoff_initial` * 2^n after the n-th failed
  // restart in a row, up to the maximum.
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{5000};
  // A restarted worker that dies sooner than this after its restart began is
  // a failed restart (the backoff grows); one that stayed up this long resets
  // the backoff.
  std::chrono::seconds stable_after{10};
  // This many worker starts failing in a row (spawn error, or the worker
  // exiting before its hello) with no worker becoming ready in between,
  // across all groups and spares, or this many in a row of one group with no
  // worker of that group becoming ready in between (a spare's hello says
  // nothing about a group whose own worker cannot start): relibd cannot work
  // and gives up.
  int max_failed_starts = 5;
};

// Not thread-safe: the supervisor calls it under its own lock.
class Recovery {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Recovery(const RestartPolicy& policy) : policy_(policy) {}

  const RestartPolicy& policy() const { return policy_; }

  // Which of `modules` (those a dead worker hosted or was restoring) its death
  // counts against: `blamed` alone if it is one of them; every one of them
  // when no module could be blamed (`blamed` empty: nothing recorded, e.g. an
  // external SIGKILL); none when `blamed` names a module not among them (one
  // being loaded for the first time: its load fails, the others are innocent)
  // or when the worker died before its hello (no module code ran: a broken
  // worker, counted by StartFailed instead).
  static std::vector<std::string> Charged(const std::vector<std::string>& modules, const std::string& blamed,
                                          bool worker_was_ready);

  // Counts a crash of `module` at `now`; returns its crashes within the window.
  int AddCrash(const std::string& module, Clock::time_point now);
  // Whether `crashes` within the window exceed the intensity limit.
  bool GivesUp(int crashes) const { return crashes > policy_.max_restarts; }
  // Drops the crash history of a module that was unloaded or is loaded afresh.
  void Forget(const std::string& module);

  // The restarter begins restarting `group`'s worker at `now`.
  void RestartBegins(const std::string& group, Clock::time_point now);
  // `group`'s worker died at `now`; returns the delay before restarting it.
  std::chrono::milliseconds BackoffAfterDeath(const std::string& group, Clock::time_point now);

  // A worker for `group` ("" for a spare) could not start (spawn error, or
  // exit before its hello). Returns true once `max_failed_starts` happened in
  // a row, across all workers or for `group` alone: time to give up.
  bool StartFailed(const std::string& group);
  // A worker serving `group` ("" for a spare) said hello, or `group` was
  // handed a spare that had: starting workers works, and works for `group`.
  void WorkerReady(const std::string& group);
  // The longest run of failed starts that StartFailed(group) counted.
  int failed_starts(const std::string& group) const;

 private:
  struct GroupState {
    int failed_restarts = 0;
    bool restarted = false;  // the current worker was started by the restarter
    Clock::time_point restart_began;
  };

  const RestartPolicy policy_;
  std::map<std::string, std::deque<Clock::time_point>> crashes_;
  std::map<std::string, GroupState> groups_;
  int failed_starts_ = 0;                               // all workers, in a row
  std::map<std::string, int> failed_starts_of_group_;  // "" = spares
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_RECOVERY_H_
