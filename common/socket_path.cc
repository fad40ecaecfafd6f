#include "common/socket_path.h"

#include <unistd.h>

#include <cstdlib>

namespace relib::common {

std::string DefaultSocketPath() {
  if (const char* explicit_path = std::getenv("RELIBD_SOCKET"); explicit_path && *explicit_path) {
    return explicit_path;
  }
  if (::geteuid() == 0) return "/run/relibd/relibd.sock";
  if (const char* runtime = std::getenv("XDG_RUNTIME_DIR"); runtime && *runtime) {
    return std::string(runtime) + "/relibd.sock";
  }
  return "/tmp/relibd-" + std::to_string(::getuid()) + ".sock";
}

}  // namespace relib::common
