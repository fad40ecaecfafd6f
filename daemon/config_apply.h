// Applies the modules of relibd's config file to the Supervisor: the
// difference between the file and the config-owned modules running now, at
// start and on every config reload (SIGHUP, the ReloadConfig RPC).
#ifndef RELIB_DAEMON_CONFIG_APPLY_H_
#define RELIB_DAEMON_CONFIG_APPLY_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "daemon/config_file.h"
#include "daemon/event_bus.h"
#include "daemon/supervisor.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// Ownership: modules declared in the file are config-owned (ModuleInfo.source
// = MODULE_SOURCE_CONFIG); only those are added, changed or removed here.
// A module loaded through the API is never touched; a file module whose name
// an API module already has fails (CONFIG_CHANGE_FAILED) and is retried on the
// next reload.
//
// What is compared is the running module, not the previous file: a module
// restored from elsewhere (a persistent module table) with the same path,
// group, options and watch flag is left untouched.
//
// Thread-safe: applies are serialized. Blocking: must not run on the io thread.
class ConfigApplier {
 public:
  // `config`: the file as read at start; its daemon-wide settings are those in
  // force (flags aside) until relibd restarts.
  ConfigApplier(Supervisor& supervisor, EventBus& events, RelibdConfig config);
  // Waits for a background reload to finish. Call after Supervisor::Shutdown,
  // so that one fails fast.
  ~ConfigApplier();

  // Called before and after every reload (RPC and SIGHUP; not Apply), e.g. to
  // tell systemd RELOADING=1 / READY=1. Set before the first reload.
  void set_reload_hooks(std::function<void()> before, std::function<void()> after) {
    before_reload_ = std::move(before);
    after_reload_ = std::move(after);
  }

  // Applies the file read at start (relibd's startup). Failed modules are in
  // the response and the log; nothing here is fatal.
  v1::ReloadConfigResponse Apply();
  // Reads the file again and applies it. `trigger` ("SIGHUP", "ReloadConfig")
  // is for the log. A file that does not parse changes nothing: INVALID_ARGUMENT
  // (NOT_FOUND if unreadable) with "FILE:LINE:COLUMN: reason", logged and
  // published as an event.
  absl::StatusOr<v1::ReloadConfigResponse> Reload(const std::string& trigger);
  // Reload on a background thread (for a signal handler); returns at once. A
  // request while one runs makes one more run after it.
  void ReloadInBackground(const std::string& trigger);

 private:
  v1::ReloadConfigResponse ApplyLocked(const RelibdConfig& wanted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mutex_);
  void Record(v1::ReloadConfigResponse& response, const std::string& module, v1::ConfigChange change,
              const std::string& message, const v1::ModuleInfo* info);

  Supervisor& supervisor_;
  EventBus& events_;
  std::function<void()> before_reload_;
  std::function<void()> after_reload_;

  std::mutex apply_mutex_;
  RelibdConfig config_ ABSL_GUARDED_BY(apply_mutex_);  // the file as last applied
  std::vector<FlagSetting> started_settings_;  // the file's settings and limits at start (set once)

  std::mutex background_mutex_;
  std::condition_variable background_wakeup_;
  std::vector<std::string> pending_ ABSL_GUARDED_BY(background_mutex_);
  bool stopping_ ABSL_GUARDED_BY(background_mutex_) = false;
  std::thread background_;
};

// Daemon-wide settings whose value differs between `before` and `after`, as
// "server.socket changed (/a -> /b): takes effect when relibd restarts".
std::vector<std::string> RestartNeeded(const std::vector<FlagSetting>& before, const std::vector<FlagSetting>& after);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_CONFIG_APPLY_H_
