#include "common/proc_maps.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"

namespace relib::common {
namespace {

std::string ProcPath(pid_t pid, const char* file) {
  return pid == 0 ? absl::StrCat("/proc/self/", file) : absl::StrCat("/proc/", pid, "/", file);
}

// The whole file in one buffer, read with plain read(2): the kernel builds
// /proc files a page at a time, so anything more (iostreams, getline) only
// adds copies.
absl::StatusOr<std::string> ReadProcFile(pid_t pid, const char* file) {
  std::string path = ProcPath(pid, file);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ESRCH) return absl::NotFoundError(absl::StrCat("no process ", pid));
    return absl::ErrnoToStatus(errno, "open " + path);
  }
  std::string text;
  size_t used = 0;
  text.resize(16384);
  for (;;) {
    if (text.size() - used < 4096) text.resize(text.size() * 2);
    ssize_t n = ::read(fd.get(), text.data() + used, text.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("no process ", pid));
      return absl::ErrnoToStatus(errno, "read " + path);
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  text.resize(used);
  return text;
}

// Reads a hex number at `p`, advancing it; stops at the first non-hex digit.
uint64_t Hex(const char*& p, const char* end) {
  uint64_t value = 0;
  for (; p < end; ++p) {
    char c = *p;
    unsigned digit;
    if (c >= '0' && c <= '9') {
      digit = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      digit = static_cast<unsigned>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      digit = static_cast<unsigned>(c - 'A' + 10);
    } else {
      break;
    }
    value = value << 4 | digit;
  }
  return value;
}

uint64_t Decimal(const char*& p, const char* end) {
  uint64_t value = 0;
  for (; p < end && *p >= '0' && *p <= '9'; ++p) value = value * 10 + static_cast<uint64_t>(*p - '0');
  return value;
}

const char* SkipSpaces(const char* p, const char* end) {
  while (p < end && (*p == ' ' || *p == '\t')) ++p;
  return p;
}

const char* SkipField(const char* p, const char* end) {
  while (p < end && *p != ' ' && *p != '\t') ++p;
  return SkipSpaces(p, end);
}

// One line (without its newline): start-end perms offset dev inode [path].
Mapping ParseLine(std::string_view line) {
  Mapping m;
  m.line.assign(line);
  const char* p = line.data();
  const char* end = p + line.size();
  m.start = Hex(p, end);
  if (p < end && *p == '-') ++p;
  m.end = Hex(p, end);
  p = SkipSpaces(p, end);
  const char* perms = p;
  p = SkipField(p, end);
  const char* perms_end = perms;
  while (perms_end < end && *perms_end != ' ' && *perms_end != '\t') ++perms_end;
  m.perms.assign(perms, perms_end);
  m.offset = Hex(p, end);
  p = SkipField(SkipSpaces(p, end), end);  // dev
  m.inode = Decimal(p, end);
  p = SkipSpaces(p, end);
  m.path.assign(p, end);
  return m;
}

}  // namespace

std::vector<Mapping> ParseMappings(std::string_view text) {
  std::vector<Mapping> mappings;
  mappings.reserve(text.size() / 64);
  while (!text.empty()) {
    size_t newline = text.find('\n');
    std::string_view line = text.substr(0, newline);
    if (!line.empty()) mappings.push_back(ParseLine(line));
    if (newline == std::string_view::npos) break;
    text.remove_prefix(newline + 1);
  }
  return mappings;
}

absl::StatusOr<std::vector<Mapping>> ReadMappings(pid_t pid) {
  absl::StatusOr<std::string> text = ReadProcFile(pid, "maps");
  if (!text.ok()) return text.status();
  return ParseMappings(*text);
}

std::vector<Mapping> MappingsOfFile(const std::vector<Mapping>& mappings, const std::string& path) {
  std::vector<Mapping> found;
  const std::string deleted = path + " (deleted)";
  for (const Mapping& m : mappings) {
    if (m.path == path || m.path == deleted) found.push_back(m);
  }
  return found;
}

absl::StatusOr<std::vector<Mapping>> ReadMappingsOfFile(pid_t pid, const std::string& path) {
  absl::StatusOr<std::string> text = ReadProcFile(pid, "maps");
  if (!text.ok()) return text.status();
  // Only lines that contain the path are parsed at all.
  std::vector<Mapping> found;
  const std::string deleted = path + " (deleted)";
  std::string_view all(*text);
  for (size_t at = all.find(path); at != std::string_view::npos; at = all.find(path, at + 1)) {
    size_t begin = all.rfind('\n', at);
    begin = begin == std::string_view::npos ? 0 : begin + 1;
    size_t end = all.find('\n', at);
    if (end == std::string_view::npos) end = all.size();
    Mapping m = ParseLine(all.substr(begin, end - begin));
    if (m.path == path || m.path == deleted) found.push_back(std::move(m));
    at = end;
  }
  return found;
}

absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid) {
  absl::StatusOr<std::string> text = ReadProcFile(pid, "status");
  if (!text.ok()) return text.status();
  size_t at = text->find("\nVmRSS:");
  if (at != std::string::npos) {
    const char* p = text->c_str() + at + 7;
    const char* end = text->c_str() + text->size();
    p = SkipSpaces(p, end);
    if (p < end && *p >= '0' && *p <= '9') return Decimal(p, end) * 1024;
  }
  return absl::InternalError("no VmRSS in " + ProcPath(pid, "status"));
}

}  // namespace relib::common
