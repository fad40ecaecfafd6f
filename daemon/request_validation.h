// Validation of API request fields (module and group names, module paths)
// before anything acts on them; shared by the Supervisor and the fuzz target.
#ifndef RELIB_DAEMON_REQUEST_VALIDATION_H_
#define RELIB_DAEMON_REQUEST_VALIDATION_H_

#include <string>

#include "absl/status/status.h"

namespace relib::daemon {

// OK for 1-64 characters from [A-Za-z0-9_.-]; INVALID_ARGUMENT naming `what`
// ("module", "worker") and the name otherwise.
absl::Status ValidateName(const std::string& name, const char* what);
// OK for an absolute path without NUL bytes; INVALID_ARGUMENT otherwise.
absl::Status ValidatePath(const std::string& path);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_REQUEST_VALIDATION_H_
