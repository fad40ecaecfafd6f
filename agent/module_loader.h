// Loads, calls and unloads relib modules inside the worker process, and runs
// the unload checks: threads, thread-local destructors, pthread keys, fds,
// mappings (anonymous and file-backed), heap leaks, and finally proof that
// the library is unmapped (a file lease, or /proc/self/maps).
#ifndef RELIB_AGENT_MODULE_LOADER_H_
#define RELIB_AGENT_MODULE_LOADER_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/code_reference.h"
#include "agent/dlopen_tracker.h"
#include "agent/child_tracker.h"
#include "agent/fd_tracker.h"
#include "agent/host_services.h"
#include "agent/mmap_tracker.h"
#include "agent/thread_tracker.h"
#include "common/flight_recorder.h"
#include "common/proc_maps.h"
#include "common/unique_fd.h"
#include "common/message_limits.h"

namespace relib::agent {

enum class LeakPolicy { kReport, kFree };
enum class FdPolicy { kReport, kClose };
enum class MappingPolicy { kReport, kUnmap };
enum class SignalPolicy { kRestore, kRefuse };
enum class DlopenPolicy { kReport, kClose };
enum class ChildPolicy { kReport, kKill };

struct ModuleOptions {
  std::chrono::milliseconds thread_grace{1000};
  LeakPolicy leaks = LeakPolicy::kReport;
  FdPolicy fds = FdPolicy::kReport;
  MappingPolicy mappings = MappingPolicy::kReport;
  // For a signal handler into the module found only by the last guard (set
  // behind the trackers' back): reset it, or refuse the unload.
  SignalPolicy signals = SignalPolicy::kRestore;
  DlopenPolicy libraries = DlopenPolicy::kReport;
  ChildPolicy children = ChildPolicy::kReport;
  bool capture_sites = false;
  // Execution model (see CallScheduler): 0 = the defaults.
  uint32_t max_concurrent_calls = 0;
  uint32_t max_queued_calls = 0;
};

struct LoadInfo {
  std::string descriptor_name;
  std::vector<std::string> exports;
  // Why this module will never unmap, or other things worth knowing.
  std::vector<std::string> warnings;
  int64_t load_micros = 0;
  // The descriptor declares RELIB_MODULE_FLAG_THREAD_SAFE.
  bool thread_safe = false;
};

struct LeakSite {
  std::string location;
  int64_t bytes = 0;
  int64_t blocks = 0;
};

// What unloading one version found.
struct UnloadReport {
  std::string name;
  uint64_t version = 0;
  std::string path;  // the original path the version was loaded from
  bool refused = false;
  bool unmapped = false;
  // How `unmapped` was established: "file lease" or "/proc/self/maps".
  std::string unmapped_proof;
  std::vector<std::string> remaining_mappings;
  std::vector<std::string> pin_reasons;
  std::string before_unload_error;
  bool before_unload_missing = false;
  int64_t before_unload_micros = 0;
  int64_t unload_micros = 0;
  std::vector<threads::LiveThread> live_threads;
  bool heap_tracking = false;
  int64_t leaked_bytes = 0;
  int64_t leaked_blocks = 0;
  bool leaks_freed = false;
  std::vector<LeakSite> leak_sites;
  int64_t tls_run = 0;
  int64_t tls_discarded = 0;
  std::vector<pid_t> tls_discarded_on;
  std::vector<fds::OpenFd> open_fds;
  bool fds_closed = false;
  int pthread_keys_deleted = 0;
  std::vector<maps::Region> mappings;
  bool mappings_unmapped = false;
  // Paths back into the module's code left in process-wide state.
  std::vector<CodeReference> code_references;
  std::vector<libraries::OpenLibrary> libraries;
  bool libraries_closed = false;
  std::vector<children::Child> children;  // alive at unload, with their descendants
  bool children_killed = false;
};

struct ModuleUsage {
  std::string name;
  int64_t heap_bytes = 0;
  int64_t heap_blocks = 0;
  int threads = 0;
  int open_fds = 0;
};

// Module log sink: (spdlog level, module name, text). Must be thread-safe.
using ModuleLogFn = std::function<void(int level, const std::string& module, std::string_view text)>;

// Owns every module loaded in this process. Each load copies (or, for a
// read-only file, hard-links) the file into `scratch_dir` under a name never
// used before in this process, or takes the file relibd placed there for it,
// so the original may be overwritten at any time and dlopen never returns a
// cached old copy.
//
// Threads: Load, Unload and Reload come from one control thread, which also
// runs every module hook. Call, IsLoaded and Usage are thread-safe and may
// run on any thread beside them, with one rule the caller (CallScheduler)
// keeps: no Call of a module runs while that module is unloaded or reloaded
// (Call of other modules may). How many Calls of one module run at once is
// the caller's business too (RELIB_MODULE_FLAG_THREAD_SAFE, LoadInfo).
class ModuleLoader {
 public:
  // `services` (may be null: modules then get errors from the stores) must
  // outlive the loader.
  ModuleLoader(std::string scratch_dir, ModuleLogFn log, HostServices* services = nullptr);
  // Runs what loaded modules registered for exit and drops every path into
  // their code, then dlcloses them (one whose threads still run stays mapped).
  ~ModuleLoader();
  ModuleLoader(const ModuleLoader&) = delete;
  ModuleLoader& operator=(const ModuleLoader&) = delete;

  // Errors: ALREADY_EXISTS (name taken), NOT_FOUND (no file), INVALID_ARGUMENT
  // (not an ELF shared object, dlopen failure, no descriptor),
  // FAILED_PRECONDITION (ABI mismatch, on_load failed), RESOURCE_EXHAUSTED
  // (too many modules). Nothing stays loaded on error.
  // `display_path` (default: `path`) is what messages and reports show when
  // `path` is relibd's private copy of the file. `placed_in_scratch`: `path`
  // is a read-only file relibd put in the scratch directory for this load
  // alone under a name never used before: it is loaded as it is (no copy) and
  // removed with the version.
  absl::StatusOr<LoadInfo> Load(const std::string& name, const std::string& path, uint64_t version,
                                const ModuleOptions& options, const std::string& display_path = "",
                                bool placed_in_scratch = false);

  // before_unload, then the checks, dlclose, unmap verification. `report` is
  // filled as far as the unload got. Errors: NOT_FOUND (not loaded);
  // FAILED_PRECONDITION if before_unload failed and !force, or if module
  // threads are still alive after the grace period (report.refused) — in both
  // cases the module stays loaded.
  absl::Status Unload(const std::string& name, bool force, UnloadReport& report);
  // File-system work the reply need not wait for: removes the copies of
  // versions a Reload replaced and makes an unnamed inode (O_TMPFILE,
  // readable: the next copy is checked through it) in the scratch dir for
  // the next copy. Control thread, after the reply is sent.
  void FinishAfterReply();

  // Opens and checks the new file first (a bad file leaves the old version
  // untouched), then unloads the old version as Unload does and runs the new
  // on_load. If that fails the old version is loaded again and the error says
  // so; if even that fails the module is gone and the error says that too.
  // `report` receives the old version's unload report. `options` replace the
  // module's options when non-null.
  // `before_swap`, if set, runs once the new version is open and checked,
  // right before the old version's before_unload: the point from which no
  // call of `name` may run (the caller holds them) until Reload returns.
  absl::StatusOr<LoadInfo> Reload(const std::string& name, const std::string& path, uint64_t version, bool force,
                                  const ModuleOptions* options, UnloadReport& report,
                                  const std::string& display_path = "",
                                  const std::function<void()>& before_swap = nullptr,
                                  bool placed_in_scratch = false);

  // Calls an export. Errors: NOT_FOUND (module or export), UNKNOWN (the
  // export returned an error code; the message holds its text, cut to a few
  // KiB), RESOURCE_EXHAUSTED (the export's output went past output_limit();
  // the module saw its append refused and the module stays loaded).
  // `version`, if not null, receives the version that ran the call.
  absl::StatusOr<std::string> Call(const std::string& name, const std::string& export_name,
                                   std::string_view input, uint64_t* version = nullptr);

  bool IsLoaded(const std::string& name) const {
    std::shared_lock<std::shared_mutex> lock(modules_mutex_);
    return modules_.count(name) != 0;
  }

  // Live resources of every loaded module.
  std::vector<ModuleUsage> Usage() const;

  // Where to publish the current module and phase (may stay null, e.g. in
  // tests). Must outlive the loader.
  void set_flight_recorder(common::FlightRecorder* recorder) { recorder_ = recorder; }

  // The most bytes one export call may output (what relibd can deliver).
  void set_output_limit(uint64_t bytes) { output_limit_ = bytes; }
  uint64_t output_limit() const { return output_limit_; }

 private:
  struct Module;

  // Copy + dlopen + descriptor + ABI checks, no on_load.
  // `hold_exit_registrations`: the version replaces one still loaded; its
  // static constructors' exit registrations wait (exits::Hold) until the
  // caller's exits::Release, once the old version is closed.
  absl::StatusOr<std::unique_ptr<Module>> Open(const std::string& name, const std::string& path, uint64_t version,
                                               const ModuleOptions& options, const std::string& display_path,
                                               bool placed_in_scratch = false, bool hold_exit_registrations = false);
  absl::Status RunOnLoad(Module& module);
  // before_unload (fills report); FAILED_PRECONDITION if it failed and !force.
  absl::Status RunBeforeUnload(Module& module, bool force, UnloadReport& report);
  // Threads, TLS, keys, fds, mappings, heap, dlclose, unmap proof. Refuses
  // (FAILED_PRECONDITION, report.refused) if module threads are still alive.
  // Keeps the private copy if `keep_copy` (for a rollback).
  absl::Status CheckAndClose(Module& module, UnloadReport& report, bool keep_copy);
  // Runs or removes what the module left in process-wide state that leads
  // back into its code (exit/fork handlers, cookie streams, printf
  // specifiers, signal handlers, C++ and libc hook variables).
  // REQUIRES: the module is still mapped.
  std::vector<CodeReference> ReleasePathsIntoCode(Module& module);
  // After dlclose: drops whatever static destructors registered meanwhile,
  // never running it (the code is gone).
  void ForgetPathsIntoCode(ModuleId id);
  // True if `path` (as /proc names it) is one of the module copies this
  // loader makes, its own or another module's.
  bool IsModuleFile(const std::string& path) const;
  // Why `module`'s copy is still mapped after dlclose: every reason true. The
  // dynamic loader still listing it means a reference (unique symbols,
  // nodelete, a module's dlopen, or one the agent did not see); every other
  // mapping of the file in `remaining` is someone's mmap, named by holder.
  std::vector<std::string> ExplainPins(const Module& module, const std::vector<common::Mapping>& remaining) const;
  // For a version that failed before serving: CheckAndClose, and if its
  // threads keep it alive, park it for good (its code must stay mapped).
  void Discard(std::unique_ptr<Module> module, std::string* note);

  void EnterPhase(common::Phase phase, const Module& module, const std::string& detail = "");

  std::string scratch_dir_;
  std::string scratch_prefix_;  // canonical scratch_dir_ + "/"
  ModuleLogFn log_;
  HostServices* services_;
  common::FlightRecorder* recorder_ = nullptr;
  uint64_t output_limit_ = common::OutputLimit(common::MegabytesToBytes(common::kDefaultMaxMessageMb));
  uint64_t next_copy_id_ = 1;
  // Control thread only. The file system (st_dev) on which ProbeSeesMappings
  // once proved that a mapping blocks the lease probe: a property of the
  // kernel and that file system, not of one file, so later copies on it are
  // not probed again (each unload still takes the lease, or scans the maps).
  std::optional<dev_t> lease_sees_mappings_on_;
  // Control thread only. A hard link to relibd's copy was refused with EPERM
  // (a worker under another uid, fs.protected_hardlinks): relibd's copies all
  // have one owner, so later ones are copied without trying the link again.
  bool links_refused_ = false;
  // Control thread only: see FinishAfterReply.
  std::vector<std::string> removals_after_reply_;
  common::UniqueFd spare_copy_;
  // Written by the control thread only, under an exclusive lock; read under
  // a shared one by other threads (Call, Usage).
  mutable std::shared_mutex modules_mutex_;
  std::map<std::string, std::unique_ptr<Module>> modules_;
  // Versions that could not be unloaded (threads still running after a failed
  // on_load): never dlclosed.
  std::vector<std::unique_ptr<Module>> parked_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_MODULE_LOADER_H_
