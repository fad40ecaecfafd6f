// The daemon's domain logic: which modules exist, which worker hosts them,
// and every load / reload / unload / call, with deadlines and worker-death
// handling. The RPC layer only translates to and from this class.
#ifndef RELIB_DAEMON_SUPERVISOR_H_
#define RELIB_DAEMON_SUPERVISOR_H_

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "daemon/event_bus.h"
#include "daemon/worker_handle.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

struct Deadlines {
  std::chrono::milliseconds load{10000};    // copy + dlopen + on_load
  std::chrono::milliseconds call{10000};    // one export call
  std::chrono::milliseconds unload{10000};  // before_unload + dlclose + checks
};

struct SupervisorOptions {
  WorkerOptions worker;
  Deadlines deadlines;
};

// Thread-safe: RPC threads call the public methods concurrently. Operations
// that change one module (load, reload, unload) are serialized per module;
// calls are not. The blocking methods must not run on the io thread, which
// delivers worker replies.
class Supervisor {
 public:
  Supervisor(boost::asio::io_context& io, SupervisorOptions options, EventBus& events);
  ~Supervisor();

  // Errors: INVALID_ARGUMENT (bad name or relative path), ALREADY_EXISTS,
  // and whatever the worker reports (see ModuleLoader::Load), DEADLINE_EXCEEDED
  // or UNAVAILABLE if the worker hung or died.
  absl::StatusOr<v1::ModuleInfo> Load(const std::string& name, const std::string& path,
                                      const v1::ModuleOptions& options);
  // `path` empty = reload from the current path; `options` non-null replaces
  // the module's options. A FAILED module is loaded afresh. Errors as Load
  // plus NOT_FOUND (unknown name). When the old version's unload was refused
  // or failed part-way, `failure_report` receives its report.
  absl::StatusOr<v1::ReloadResponse> Reload(const std::string& name, const std::string& path, bool force,
                                            const v1::ModuleOptions* options, v1::UnloadReport* failure_report);
  // Errors: NOT_FOUND, FAILED_PRECONDITION (before_unload failed without
  // force, or module threads still running: `failure_report` says which).
  absl::StatusOr<v1::UnloadReport> Unload(const std::string& name, bool force, v1::UnloadReport* failure_report);
  absl::StatusOr<v1::CallResponse> Call(const std::string& name, const std::string& export_name,
                                        const std::string& input);
  v1::StatusResponse Status() const;

  // Stops the worker(s) and waits (a few seconds at most) for them to exit;
  // every later request fails with UNAVAILABLE. Not on the io thread.
  void Shutdown();

 private:
  struct Record {
    std::mutex operation;  // held for the whole of a load / reload / unload
    v1::ModuleInfo info ABSL_GUARDED_BY(Supervisor::mutex_);
  };

  absl::StatusOr<std::shared_ptr<WorkerHandle>> EnsureWorker();
  std::shared_ptr<Record> Find(const std::string& name) const;
  void OnWorkerExit(pid_t pid, const std::string& reason);
  void OnWorkerLog(pid_t pid, const v1::link::Log& log);
  void OnWorkerUsage(pid_t pid, const v1::link::Usage& usage);
  void Publish(v1::EventKind kind, const std::string& module, uint64_t version, int32_t pid,
               const std::string& message, const v1::UnloadReport* report = nullptr);

  boost::asio::io_context& io_;
  const SupervisorOptions options_;
  EventBus& events_;

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Record>> modules_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<WorkerHandle> worker_ ABSL_GUARDED_BY(mutex_);
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_SUPERVISOR_H_
