// Reading /proc/<pid>/maps and /proc/<pid>/status: the ground truth for
// "is this library really unmapped" and for memory drift checks.
#ifndef RELIB_COMMON_PROC_MAPS_H_
#define RELIB_COMMON_PROC_MAPS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace relib::common {

struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  std::string perms;
  uint64_t offset = 0;
  uint64_t inode = 0;
  std::string path;  // empty for anonymous mappings; may end in " (deleted)"
  std::string line;  // the raw line
};

// Parses /proc/<pid>/maps (pid 0 = self). Errors: NOT_FOUND if the process
// is gone, the open errno otherwise.
absl::StatusOr<std::vector<Mapping>> ReadMappings(pid_t pid);

// Parses the text of a maps file (what ReadMappings reads).
std::vector<Mapping> ParseMappings(std::string_view text);

// Mappings whose file is `path` (also matching the " (deleted)" form).
std::vector<Mapping> MappingsOfFile(const std::vector<Mapping>& mappings, const std::string& path);

// ReadMappings + MappingsOfFile in one pass that parses only the lines naming
// `path`: the unload check's question, asked on every unload and reload.
// Errors as ReadMappings.
absl::StatusOr<std::vector<Mapping>> ReadMappingsOfFile(pid_t pid, const std::string& path);

// VmRSS of the process in bytes (pid 0 = self).
absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid);

}  // namespace relib::common

#endif  // RELIB_COMMON_PROC_MAPS_H_
