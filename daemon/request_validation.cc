#include "daemon/request_validation.h"

#include <cctype>

#include "absl/strings/str_cat.h"
#include "common/log_text.h"

namespace relib::daemon {

absl::Status ValidateName(const std::string& name, const char* what) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat("invalid ", what, " name '", common::EscapeForLog(name, 80),
                                                   "': use 1-64 characters from [A-Za-z0-9_.-]"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePath(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("module path '", common::EscapeForLog(path, 4096), "' must be absolute"));
  }
  // A NUL would silently cut the path the kernel sees from the one checked.
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("module path '", common::EscapeForLog(path, 4096), "' contains a NUL byte"));
  }
  return absl::OkStatus();
}

}  // namespace relib::daemon
