#include "common/proc_maps.h"

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace relib::common {
namespace {

std::string ProcPath(pid_t pid, const char* file) {
  return pid == 0 ? absl::StrCat("/proc/self/", file) : absl::StrCat("/proc/", pid, "/", file);
}

absl::StatusOr<std::ifstream> OpenProc(pid_t pid, const char* file) {
  std::string path = ProcPath(pid, file);
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT || errno == ESRCH) return absl::NotFoundError(absl::StrCat("no process ", pid));
    return absl::ErrnoToStatus(errno, "open " + path);
  }
  return in;
}

}  // namespace

absl::StatusOr<std::vector<Mapping>> ReadMappings(pid_t pid) {
  auto in = OpenProc(pid, "maps");
  if (!in.ok()) return in.status();
  std::vector<Mapping> mappings;
  std::string line;
  while (std::getline(*in, line)) {
    // start-end perms offset dev inode [path]
    Mapping m;
    m.line = line;
    std::istringstream fields(line);
    std::string range, dev;
    fields >> range >> m.perms;
    std::string offset_hex;
    fields >> offset_hex >> dev >> m.inode;
    std::pair<std::string, std::string> bounds = absl::StrSplit(range, '-');
    m.start = std::stoull(bounds.first, nullptr, 16);
    m.end = std::stoull(bounds.second, nullptr, 16);
    m.offset = std::stoull(offset_hex, nullptr, 16);
    std::string rest;
    std::getline(fields, rest);
    size_t first = rest.find_first_not_of(" \t");
    m.path = first == std::string::npos ? "" : rest.substr(first);
    mappings.push_back(std::move(m));
  }
  return mappings;
}

std::vector<Mapping> MappingsOfFile(const std::vector<Mapping>& mappings, const std::string& path) {
  std::vector<Mapping> found;
  const std::string deleted = path + " (deleted)";
  for (const Mapping& m : mappings) {
    if (m.path == path || m.path == deleted) found.push_back(m);
  }
  return found;
}

absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid) {
  auto in = OpenProc(pid, "status");
  if (!in.ok()) return in.status();
  std::string line;
  while (std::getline(*in, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    uint64_t kib = 0;
    if (fields >> kib) return kib * 1024;
    break;
  }
  return absl::InternalError("no VmRSS in " + ProcPath(pid, "status"));
}

}  // namespace relib::common
