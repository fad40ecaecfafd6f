#include "common/proc_tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"

namespace relib::common {
namespace {

// Reads a small /proc file whole (at most `limit` bytes); "" if it cannot be
// opened.
std::string ReadSmallFile(const std::string& path, size_t limit = 4096) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string text;
  char buffer[1024];
  while (text.size() < limit) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, n);
    // A /proc file fills the buffer unless it is at its end: a short read
    // is the end (saves the read that would return 0).
    if (static_cast<size_t>(n) < sizeof(buffer)) break;
  }
  ::close(fd);
  return text;
}

// Numeric entries of a /proc directory.
template <typename F>
void ForEachPidEntry(const std::string& directory, F f) {
  DIR* dir = ::opendir(directory.c_str());
  if (dir == nullptr) return;
  while (dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid > 0 && end != entry->d_name && *end == '\0') f(static_cast<pid_t>(pid));
  }
  ::closedir(dir);
}

// Whether /proc/PID/task/TID/children exists on this kernel.
bool HaveChildrenFiles() {
  static const bool have = ::access("/proc/thread-self/children", R_OK) == 0;
  return have;
}

std::vector<ProcStat> AllProcesses() {
  std::vector<ProcStat> all;
  ForEachPidEntry("/proc", [&](pid_t pid) {
    if (auto stat = ReadProcStat(pid)) all.push_back(*stat);
  });
  return all;
}

}  // namespace

std::optional<ProcStat> ReadProcStat(pid_t pid) {
  std::string text = ReadSmallFile(absl::StrCat("/proc/", pid, "/stat"));
  // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
  size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 >= text.size()) return std::nullopt;
  ProcStat stat;
  stat.pid = pid;
  stat.state = text[paren + 2];
  const char* cursor = text.c_str() + paren + 3;
  char* end = nullptr;
  // Fields 4 (ppid) to 22 (starttime), counted from 1.
  for (int field = 4; field <= 22; ++field) {
    unsigned long long value = std::strtoull(cursor, &end, 10);
    if (end == cursor) return std::nullopt;
    if (field == 4) stat.ppid = static_cast<pid_t>(value);
    if (field == 22) stat.start_time = value;
    cursor = end;
  }
  return stat;
}

std::vector<ProcStat> ChildrenOf(pid_t parent) {
  std::vector<ProcStat> children;
  if (!HaveChildrenFiles()) {
    for (const ProcStat& stat : AllProcesses()) {
      if (stat.ppid == parent) children.push_back(stat);
    }
    return children;
  }
  std::string tasks = absl::StrCat("/proc/", parent, "/task");
  ForEachPidEntry(tasks, [&](pid_t tid) {
    std::string list = ReadSmallFile(absl::StrCat(tasks, "/", tid, "/children"), 1 << 20);
    const char* cursor = list.c_str();
    char* end = nullptr;
    for (long pid = std::strtol(cursor, &end, 10); end != cursor; pid = std::strtol(cursor, &end, 10)) {
      cursor = end;
      auto stat = ReadProcStat(static_cast<pid_t>(pid));
      if (stat && stat->ppid == parent) children.push_back(*stat);
    }
  });
  return children;
}

std::vector<ProcStat> DescendantsOf(pid_t root) {
  std::vector<ProcStat> found;
  if (HaveChildrenFiles()) {
    std::vector<pid_t> frontier = {root};
    while (!frontier.empty()) {
      pid_t pid = frontier.back();
      frontier.pop_back();
      for (const ProcStat& child : ChildrenOf(pid)) {
        found.push_back(child);
        frontier.push_back(child.pid);
      }
    }
    return found;
  }
  std::multimap<pid_t, ProcStat> by_parent;
  for (const ProcStat& stat : AllProcesses()) by_parent.emplace(stat.ppid, stat);
  std::vector<pid_t> frontier = {root};
  for (size_t next = 0; next < frontier.size() && frontier.size() < 100000; ++next) {
    auto [begin, end] = by_parent.equal_range(frontier[next]);
    for (auto it = begin; it != end; ++it) {
      found.push_back(it->second);
      frontier.push_back(it->second.pid);
    }
  }
  return found;
}

std::string CommandLine(pid_t pid) {
  std::string text = ReadSmallFile(absl::StrCat("/proc/", pid, "/cmdline"));
  while (!text.empty() && text.back() == '\0') text.pop_back();
  for (char& c : text) {
    if (c == '\0') c = ' ';
  }
  if (!text.empty()) return text;
  std::string comm = ReadSmallFile(absl::StrCat("/proc/", pid, "/comm"));
  while (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm.empty() ? "" : absl::StrCat("[", comm, "]");
}

pid_t LastAllocatedPid() {
  std::string text = ReadSmallFile("/proc/loadavg");
  size_t space = text.find_last_of(' ');
  if (space == std::string::npos) return -1;
  return static_cast<pid_t>(std::atoi(text.c_str() + space + 1));
}

UniqueFd OpenPidfd(const ProcStat& seen) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, seen.pid, 0)));
  if (!pidfd.valid()) return pidfd;
  ::fcntl(pidfd.get(), F_SETFD, FD_CLOEXEC);
  // Checked after opening: if this is still the process that was seen, the
  // pidfd refers to it for good.
  auto now = ReadProcStat(seen.pid);
  if (!now || now->start_time != seen.start_time) return UniqueFd();
  return pidfd;
}

int KillTrees(const std::vector<ProcStat>& roots, std::chrono::milliseconds timeout) {
  // Descendants are listed before anything dies: once a parent is gone its
  // children no longer show up under it.
  std::vector<UniqueFd> targets;
  for (const ProcStat& root : roots) {
    if (UniqueFd fd = OpenPidfd(root); fd.valid()) targets.push_back(std::move(fd));
  }
  for (const ProcStat& root : roots) {
    for (const ProcStat& descendant : DescendantsOf(root.pid)) {
      if (UniqueFd fd = OpenPidfd(descendant); fd.valid()) targets.push_back(std::move(fd));
    }
  }
  int signalled = 0;
  for (const UniqueFd& fd : targets) {
    if (::syscall(SYS_pidfd_send_signal, fd.get(), SIGKILL, nullptr, 0) == 0) ++signalled;
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const UniqueFd& fd : targets) {
    pollfd pfd{fd.get(), POLLIN, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (::poll(&pfd, 1, std::max<int>(0, static_cast<int>(left.count()))) <= 0) break;
  }
  // Roots first: a descendant whose parent is reaped here became our child
  // (if we are a subreaper) and is reaped after it.
  for (const UniqueFd& fd : targets) {
    siginfo_t info;
    std::memset(&info, 0, sizeof(info));
    while (::waitid(P_PIDFD, fd.get(), &info, WEXITED | WNOHANG) < 0 && errno == EINTR) {
    }
  }
  return signalled;
}

}  // namespace relib::common
