// What the host offers modules beyond logging: the state store and the fd
// store (see relib_host_api). The agent implements it on top of the daemon
// link; the loader only forwards module calls to it.
#ifndef RELIB_AGENT_HOST_SERVICES_H_
#define RELIB_AGENT_HOST_SERVICES_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace relib::agent {

// Implementations must be thread-safe: modules call from any thread.
class HostServices {
 public:
  virtual ~HostServices() = default;
  virtual absl::Status SaveState(const std::string& module, const std::string& key, std::string_view value) = 0;
  virtual std::optional<std::string> LoadState(const std::string& module, const std::string& key) = 0;
  // Keeps a duplicate of `fd`; the caller keeps its own.
  virtual absl::Status StoreFd(const std::string& module, const std::string& key, int fd) = 0;
  // A new fd the caller owns, or -1.
  virtual int TakeFd(const std::string& module, const std::string& key) = 0;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_HOST_SERVICES_H_
