// Static checks of a module file before it is handed to the dynamic loader.
#ifndef RELIB_AGENT_ELF_FILE_H_
#define RELIB_AGENT_ELF_FILE_H_

#include <sys/stat.h>

#include <cstdint>
#include <string>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace relib::agent {

// OK if `path` is a regular file holding a 64-bit ELF shared object for this
// machine. Errors: NOT_FOUND (missing), INVALID_ARGUMENT (not ELF, not a
// shared object, wrong class or machine), the errno of open/read otherwise.
absl::Status CheckSharedObject(const std::string& path);

// CheckSharedObject that keeps the file open: returns the open file
// (O_RDONLY | O_NONBLOCK) and fills `st` with its fstat. Same errors.
absl::StatusOr<common::UniqueFd> OpenSharedObject(const std::string& path, struct stat* st);

// OK if `path`, the file the dynamic loader is about to open, is a complete
// relib module image, checked without running any of it: a 64-bit shared
// object for this machine whose loadable segments (PT_LOAD) lie within the
// file with sane sizes and alignment; whose dynamic section (PT_DYNAMIC) lies
// in the file-backed part of a PT_LOAD, ends with DT_NULL and names a string
// table, a symbol table and a hash table that are file-backed too; whose
// dynamic symbol table defines RELIB_DESCRIPTOR_SYMBOL_NAME; and whose section
// headers, when present, lie within the file and are not zero-filled. This
// catches a library that is not a relib module before its constructors run,
// and a file cut short or with a zero-filled tail (a linker still writing it)
// before the loader faults on it.
// Messages name `display_path` (the user's path), never `path`.
// Errors: INVALID_ARGUMENT with the reason; the errno of open/read otherwise.
absl::Status CheckModuleImage(const std::string& path, const std::string& display_path);

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

// Files up to this size are read whole, once, by CheckModuleFile.
inline constexpr uint64_t kWholeImageBytes = 1 << 20;

// CheckModuleImage, then InspectPinning, on the open file `fd` whose fstat is
// `st` (read with pread from offset 0; the file's offset is not used): one
// open file for both, and a file of at most kWholeImageBytes read in one
// pread. Messages name `display_path`. Errors: those of both.
absl::StatusOr<PinningFacts> CheckModuleFile(int fd, const struct stat& st, const std::string& display_path);

}  // namespace relib::agent

#endif  // RELIB_AGENT_ELF_FILE_H_
