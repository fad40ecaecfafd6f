// Watch-and-reload: reloads a watched module when a new build of its file is
// complete. Compilers and linkers either write a temporary file and rename it
// into place, or truncate and rewrite the file itself; either way the build is
// complete when the file is closed after writing (IN_CLOSE_WRITE) or renamed
// into place (IN_MOVED_TO). A reload starts once the file has been quiet for
// the debounce time after such an event (any further write postpones it), so
// a burst of saves is one reload and a file still being written is never
// loaded; what is loaded is still validated by Supervisor::Reload, so a broken
// build leaves the running version serving and fails with the reason.
#ifndef RELIB_DAEMON_MODULE_WATCHER_H_
#define RELIB_DAEMON_MODULE_WATCHER_H_

#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "common/unique_fd.h"
#include "daemon/supervisor.h"

namespace relib::daemon {

class ModuleWatcher {
 public:
  using Clock = std::chrono::steady_clock;

  // `supervisor` must outlive the watcher. Starts its thread (which runs the
  // reloads, one at a time).
  ModuleWatcher(Supervisor& supervisor, std::chrono::milliseconds debounce);
  ~ModuleWatcher();
  ModuleWatcher(const ModuleWatcher&) = delete;
  ModuleWatcher& operator=(const ModuleWatcher&) = delete;

  // Thread-safe, never blocks: the set of watched modules or their paths may
  // have changed; the watcher thread re-reads them from the supervisor.
  void Sync();

 private:
  // One file name in one directory that, when rewritten, means a new build.
  struct Target {
    std::string dir;
    std::string file;
    auto operator<=>(const Target&) const = default;
  };
  struct Watched {
    std::set<Target> targets;
    // When a build was completed and the file has been quiet since: reload at this time.
    std::optional<Clock::time_point> due;
  };

  void Run();
  void Resync();
  // Adds or removes inotify watches so that exactly the needed directories are watched.
  void UpdateDirectoryWatches();
  void ReadEvents();
  void ReloadDue();

  Supervisor& supervisor_;
  const std::chrono::milliseconds debounce_;
  common::UniqueFd inotify_;
  common::UniqueFd wakeup_;  // eventfd: Sync() and the destructor
  // Watcher thread only.
  std::map<std::string, Watched> modules_;
  std::map<std::string, int> dir_watches_;       // dir -> watch descriptor
  std::map<int, std::string> dirs_by_watch_;     // watch descriptor -> dir
  std::set<std::string> unwatchable_;            // dirs inotify refused (retried every second)
  std::atomic<bool> stopping_{false};            // the destructor runs
  std::thread thread_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_MODULE_WATCHER_H_
