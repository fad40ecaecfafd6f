// File descriptors modules handed to relibd (host API store_fd): relibd keeps
// its own duplicate, so a listening socket stays open across reloads and
// worker restarts and is passed to each new version.
#ifndef RELIB_DAEMON_FD_STORE_H_
#define RELIB_DAEMON_FD_STORE_H_

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/unique_fd.h"

namespace relib::daemon {

// At most this many fds per module: each is one relibd fd (under the
// process's fd limit) and one message on a worker's fd channel per load.
inline constexpr size_t kMaxStoredFdsPerModule = 64;

// Thread-safe.
class FdStore {
 public:
  // RESOURCE_EXHAUSTED when `module` already keeps kMaxStoredFdsPerModule
  // fds under other keys (replacing a key's fd is always allowed).
  absl::Status Put(const std::string& module, const std::string& key, common::UniqueFd fd);
  // Duplicates of the module's fds, keyed, in key order.
  std::vector<std::pair<std::string, common::UniqueFd>> Duplicates(const std::string& module) const;
  // Closes the module's fds (on unload); returns their keys.
  std::vector<std::string> Drop(const std::string& module);

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::map<std::string, common::UniqueFd>> fds_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_FD_STORE_H_
