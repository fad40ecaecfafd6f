// The daemon's domain logic: which modules exist, which worker (isolation
// group) hosts them, every load / reload / unload / call with per-phase
// deadlines, and what happens when a worker dies: restart with backoff, the
// last good version of every module loaded again (automatic rollback), a
// restart-intensity limit per module (the policy itself is in recovery.h),
// and giving up — so systemd can take over — only when no worker can start.
// The RPC layer only translates to and from this class.
#ifndef RELIB_DAEMON_SUPERVISOR_H_
#define RELIB_DAEMON_SUPERVISOR_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "daemon/event_bus.h"
#include "daemon/fd_store.h"
#include "daemon/good_copy_dir.h"
#include "daemon/module_dirs.h"
#include "daemon/module_file.h"
#include "daemon/module_table.h"
#include "daemon/recovery.h"
#include "daemon/state_store.h"
#include "daemon/worker_handle.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// Defaults for modules whose options leave a deadline at 0.
struct Deadlines {
  std::chrono::milliseconds load{10000};           // copy, dlopen, static constructors
  std::chrono::milliseconds on_load{10000};
  std::chrono::milliseconds call{10000};
  std::chrono::milliseconds before_unload{10000};
  std::chrono::milliseconds unload{10000};         // checks + dlclose, on top of the thread grace
};

struct SupervisorOptions {
  WorkerOptions worker;
  Deadlines deadlines;
  RestartPolicy restart;
  // Where relibd keeps its own copy of each module's last good version.
  std::string good_dir;
  // Larger module files are refused before they are copied.
  uint64_t max_module_bytes = kDefaultMaxModuleSizeMb << 20;
  // Sockets relibd opened for modules (--preopen-tcp): module -> key -> fd,
  // put into the module's fd store at each load, so a worker without root
  // can serve a privileged port. The fds are owned by the caller and outlive
  // the supervisor.
  std::map<std::string, std::map<std::string, int>> preopened_fds;
  // Where modules may come from (checked before any copy). Null: anywhere.
  // REQUIRES: outlives the supervisor.
  const ModuleDirs* module_dirs = nullptr;
  // Module state (host API save_state / load_state). REQUIRES: not null,
  // outlives the supervisor.
  StateStore* state_store = nullptr;
  // Called when relibd cannot start workers at all (RestartPolicy::
  // max_failed_starts), from the io thread or a thread inside Load/Reload or
  // the restarter; must only make main stop.
  std::function<void(const std::string& why)> on_fatal;
  // The persistent module table (issue 9): every successful load and reload
  // is recorded, every unload forgets. Null: modules live in memory only.
  // REQUIRES: outlives the supervisor.
  ModuleTable* table = nullptr;
  // A module stored an fd (called with the fd still owned by the store) /
  // its fds were dropped on unload: for systemd's fd store. Optional.
  std::function<void(const std::string& module, const std::string& key, int fd)> on_fd_stored;
  std::function<void(const std::string& module, const std::string& key)> on_fd_dropped;
  // Warm spare workers, 0 or 1 (--spare-workers): once a worker has started,
  // relibd keeps one more started and idle, hosting nothing, with the limits
  // every group has ("*"); a group that needs a worker and would get those
  // same limits takes it instead of waiting for a fork + exec, and a new
  // spare starts in the background. Off while any nproc limit is set.
  int spare_workers = 1;
};

// Thread-safe: RPC threads call the public methods concurrently. Operations
// that change one module (load, reload, unload, restore) are serialized per
// module; calls are not. The blocking methods must not run on the io thread.
class Supervisor {
 public:
  Supervisor(boost::asio::io_context& io, SupervisorOptions options, EventBus& events);
  ~Supervisor();

  // Errors: PERMISSION_DENIED (outside the allowed module directories, or a
  // file or directory others can write: see ModuleDirs), INVALID_ARGUMENT
  // (bad name, group or relative path; a file that
  // is not regular, too large, not ELF, incomplete or not a relib module),
  // ALREADY_EXISTS, NOT_FOUND (missing file), whatever the worker reports
  // (see ModuleLoader::Load), DEADLINE_EXCEEDED or UNAVAILABLE if the worker
  // hung or died.
  // `source`: who declared it (a config reload only touches config-owned modules).
  absl::StatusOr<v1::ModuleInfo> Load(const std::string& name, const std::string& path,
                                      const v1::ModuleOptions& options, const std::string& group,
                                      v1::ModuleSource source = v1::MODULE_SOURCE_API);
  // `path` empty = reload from the current path; `options` non-null replaces
  // the module's options. A FAILED or RESTARTING module is loaded afresh.
  // `staged`: try the new version in a scratch worker (load + `self_test`)
  // before touching the live one. When the old version's unload was refused
  // or failed part-way, `failure_report` receives its report.
  // `cause` tags the events this reload publishes ("watch"; "" = API).
  absl::StatusOr<v1::ReloadResponse> Reload(const std::string& name, const std::string& path, bool force,
                                            const v1::ModuleOptions* options, bool staged,
                                            v1::UnloadReport* failure_report, const std::string& cause = "");
  // Errors: NOT_FOUND, FAILED_PRECONDITION (before_unload failed without
  // force, or module threads still running: `failure_report` says which).
  absl::StatusOr<v1::UnloadReport> Unload(const std::string& name, bool force, v1::UnloadReport* failure_report);
  absl::StatusOr<v1::CallResponse> Call(const std::string& name, const std::string& export_name,
                                        const std::string& input);
  // Marks a module watched (reloaded by ModuleWatcher when its file
  // changes) or not. Errors: NOT_FOUND.
  absl::StatusOr<v1::ModuleInfo> SetWatch(const std::string& name, bool watch);
  // Called (on the thread that made the change, no lock held) after a module
  // was loaded, reloaded, unloaded or its watch flag changed. Set before the
  // first request.
  void set_change_listener(std::function<void()> listener) { change_listener_ = std::move(listener); }
  // `with_reports`: include each module's last_failure_report.
  v1::StatusResponse Status(bool with_reports = false) const;
  // Every module's record as it stands, without asking the workers for fresh
  // usage as Status does (so without waking them). Thread-safe.
  std::vector<v1::ModuleInfo> Modules() const;

  // At start, before serving: puts every entry of the persistent table back
  // into its group at its version (relibd's copy of it) with its state and
  // stored fds, one group after another. A module that cannot be restored
  // is FAILED with the reason; never fatal. Returns {restored, failed}.
  std::pair<int, int> Restore(const std::vector<ModuleTable::Entry>& entries);
  // A module fd handed back by the service manager at start (FDSTORE).
  void AdoptStoredFd(const std::string& module, const std::string& key, common::UniqueFd fd);
  // Graceful stop (SIGTERM): runs each loaded module's before_unload (an
  // unload with force, each within its own deadlines) so it can checkpoint,
  // all within `bound`; then Shutdown. Modules stay in the persistent table:
  // a stop is not an unload. Requests that come meanwhile fail UNAVAILABLE.
  void GracefulStop(std::chrono::milliseconds bound);
  // Stops restarts and the workers, waiting a few seconds at most; later
  // requests fail with UNAVAILABLE.
  void Shutdown();

 private:
  struct Record {
    std::mutex operation;  // held for the whole of a load / reload / unload / restore
    v1::ModuleInfo info;             // guarded by mutex_
    std::string good_copy;           // relibd's copy of the current version; guarded by mutex_
    // Whole report of the last refused or failed unload/reload; guarded by mutex_.
    v1::UnloadReport last_failure_report;
  };
  struct Group {
    std::shared_ptr<WorkerHandle> worker;
  };
  // Which group a worker serves, shared with its callbacks: "" while it is
  // the spare. Guarded by mutex_.
  struct Assignment {
    std::string group;
    bool ready = false;  // the worker said hello (under mutex_)
  };
  using Clock = std::chrono::steady_clock;

  // The group's live worker: the one it has, else the spare (if it fits),
  // else a new one.
  absl::StatusOr<std::shared_ptr<WorkerHandle>> EnsureWorker(const std::string& group);
  // What every group worker and the spare report through.
  WorkerHandle::Callbacks WorkerCallbacks(std::shared_ptr<Assignment> assignment);
  // The spare, handed to `group`, if it is alive and was started with the
  // limits `group` gets; else null (and the spare stays). REQUIRES: mutex_.
  std::shared_ptr<WorkerHandle> TakeSpareLocked(const std::string& group) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Asks the restarter for a spare at `when` (if spares are on and none is
  // there). REQUIRES: mutex_.
  void WantSpareLocked(Clock::time_point when) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Delay before the next spare after one failed or died. REQUIRES: mutex_.
  std::chrono::milliseconds SpareDelayLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // On the restarter thread.
  void StartSpare();
  void OnSpareExit(pid_t pid, const WorkerExit& exit);
  // A load command for `name` carrying its saved state and (unless
  // `without_fds`) its stored fds, which go in `fds`.
  v1::link::ToWorker LoadCommand(const std::string& name, const std::string& file, const std::string& path,
                                 uint64_t version, const v1::ModuleOptions& options, bool without_fds,
                                 std::vector<common::UniqueFd>& fds) const;
  std::shared_ptr<Record> Find(const std::string& name) const;
  // Copies `path` to good_dir as the candidate of `version`, refusing what
  // cannot be a module before copying (see CopyModuleFile).
  // `own_copy`: `path` is relibd's own copy in its state dir (a restore),
  // made when the module passed the allowed-directory check at its load.
  // For a worker under another user (--worker-user), which cannot hard-link
  // relibd's copy itself: hard-links `copy` into the worker's scratch dir and
  // points `load` at it (placed_in_scratch), for files of at least
  // kPlaceInScratchBytes. Returns the placed path ("" if none: the worker
  // copies the file itself). Never fails: without a link the worker copies.
  std::string PlaceInScratch(WorkerHandle& worker, const std::string& copy, v1::link::LoadCommand& load) const;
  absl::StatusOr<std::string> StageCopy(const std::string& name, uint64_t version, const std::string& path,
                                        bool own_copy = false);
  // Loads the candidate in a throwaway worker and runs `self_test` there.
  absl::Status TryInScratchWorker(const std::string& name, const std::string& candidate,
                                  const std::string& path, uint64_t version, const v1::ModuleOptions& options);
  std::chrono::milliseconds PhaseDeadline(const v1::ModuleOptions& options, common::Phase phase) const;
  std::chrono::milliseconds PhaseDeadlineOf(const std::string& module, common::Phase phase) const;
  std::chrono::milliseconds CommandDeadline(const v1::ModuleOptions& options,
                                            std::initializer_list<common::Phase> phases) const;
  void OnWorkerExit(const std::string& group, pid_t pid, const WorkerExit& exit);
  void OnWorkerLog(pid_t pid, const v1::link::Log& log);
  void OnWorkerUsage(pid_t pid, const v1::link::Usage& usage);
  // Logs and reports (on_fatal) that relibd cannot start workers.
  void GiveUp(const std::string& why);
  // After a command succeeded in `worker`: if that worker's exit was already
  // handled (so the exit never saw `record` as its module), marks the module
  // RESTARTING with `why` and schedules a restart of `group`; returns true.
  // REQUIRES: mutex_ held.
  bool LostWorker(const std::string& group, const std::shared_ptr<WorkerHandle>& worker, Record& record,
                  const std::string& why);
  void RestartLoop();
  void RestartGroup(const std::string& group);
  // Records `name` in the persistent table (logs a failure: the module runs
  // on, it just would not come back after a restart).
  void Persist(const v1::ModuleInfo& info, const std::string& file);
  void Publish(v1::EventKind kind, const std::string& module, uint64_t version, int32_t pid,
               const std::string& message, const v1::UnloadReport* report = nullptr, const std::string& cause = "");
  void NotifyChange() const {
    if (change_listener_) change_listener_();
  }

  boost::asio::io_context& io_;
  const SupervisorOptions options_;
  EventBus& events_;

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Record>> modules_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, Group> groups_ ABSL_GUARDED_BY(mutex_);
  // Throwaway workers of staged reloads in progress (stopped on shutdown too).
  std::vector<std::shared_ptr<WorkerHandle>> scratch_workers_ ABSL_GUARDED_BY(mutex_);
  const bool spare_enabled_;
  std::shared_ptr<WorkerHandle> spare_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<Assignment> spare_assignment_ ABSL_GUARDED_BY(mutex_);
  // When the restarter starts the next spare; unset: none wanted.
  std::optional<Clock::time_point> spare_due_ ABSL_GUARDED_BY(mutex_);
  // Spares start only once some worker said hello (a worker that cannot
  // start at all is reported by the loads that need one, not by spares).
  bool ever_ready_ ABSL_GUARDED_BY(mutex_) = false;
  int spare_failures_ ABSL_GUARDED_BY(mutex_) = 0;  // in a row, reset by a hello
  Recovery recovery_ ABSL_GUARDED_BY(mutex_);
  std::deque<std::pair<Clock::time_point, std::string>> restart_queue_ ABSL_GUARDED_BY(mutex_);
  FdStore fd_store_;
  GoodCopyDir good_copies_;
  std::condition_variable restart_wakeup_;
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;
  // GracefulStop began: no new workers, no restarts.
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread restarter_;
  std::function<void()> change_listener_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_SUPERVISOR_H_
