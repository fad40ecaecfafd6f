// Static checks of a module file before it is handed to the dynamic loader.
#ifndef RELIB_AGENT_ELF_FILE_H_
#define RELIB_AGENT_ELF_FILE_H_

#include <string>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace relib::agent {

// OK if `path` is a regular file holding a 64-bit ELF shared object for this
// machine. Errors: NOT_FOUND (missing), INVALID_ARGUMENT (not ELF, not a
// shared object, wrong class or machine), the errno of open/read otherwise.
absl::Status CheckSharedObject(const std::string& path);

// What in a module's ELF file will keep glibc from ever unmapping it.
struct PinningFacts {
  // Defined STB_GNU_UNIQUE symbols (g++ emits them for inline static members
  // and template statics unless built with -fno-gnu-unique).
  std::vector<std::string> unique_symbols;
  // DF_1_NODELETE (linked with -z nodelete).
  bool nodelete = false;
};

// Reads the dynamic symbol table and dynamic section of `path`.
// REQUIRES: CheckSharedObject(path) is OK. Errors: INVALID_ARGUMENT for a
// malformed file, the errno of open/mmap otherwise.
absl::StatusOr<PinningFacts> InspectPinning(const std::string& path);

}  // namespace relib::agent

#endif  // RELIB_AGENT_ELF_FILE_H_
