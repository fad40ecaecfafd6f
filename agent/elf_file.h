// Static checks of a module file before it is handed to the dynamic loader.
#ifndef RELIB_AGENT_ELF_FILE_H_
#define RELIB_AGENT_ELF_FILE_H_

#include <string>

#include "absl/status/status.h"

namespace relib::agent {

// OK if `path` is a regular file holding a 64-bit ELF shared object for this
// machine. Errors: NOT_FOUND (missing), INVALID_ARGUMENT (not ELF, not a
// shared object, wrong class or machine), the errno of open/read otherwise.
absl::Status CheckSharedObject(const std::string& path);

}  // namespace relib::agent

#endif  // RELIB_AGENT_ELF_FILE_H_
