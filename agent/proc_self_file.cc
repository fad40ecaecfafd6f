#include "agent/proc_self_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace relib::agent {

int ProcSelfFile::Get() {
  const pid_t pid = ::getpid();
  if (int kept = fd_.load(std::memory_order_relaxed); kept >= 0) {
    const bool same = Holds(kept);
    if (same && pid == pid_) return kept;
    fd_.store(-1, std::memory_order_release);
    // A forked child's copy names the parent's entry: it is this process's
    // to close. Any other mismatch: the number is not the agent's any more.
    if (same) ::close(kept);
  }
  // Past the fd tracker's open: never marked the host's, so if a module
  // closes it behind the agent's back, whatever takes the number next is
  // swept like any other fd.
  int fd = static_cast<int>(::syscall(SYS_openat, AT_FDCWD, path_, O_RDONLY | O_CLOEXEC | flags_));
  if (fd < 0) return -1;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return -1;
  }
  pid_ = pid;
  dev_.store(st.st_dev, std::memory_order_relaxed);
  ino_.store(st.st_ino, std::memory_order_relaxed);
  fd_.store(fd, std::memory_order_release);
  return fd;
}

bool ProcSelfFile::Holds(int fd) const {
  if (fd < 0 || fd != fd_.load(std::memory_order_acquire)) return false;
  struct stat st;
  return ::fstat(fd, &st) == 0 && st.st_dev == dev_.load(std::memory_order_relaxed) &&
         st.st_ino == ino_.load(std::memory_order_relaxed);
}

ProcSelfFile& ProcSelfStatus() {
  static constinit ProcSelfFile status("/proc/self/status", 0);
  return status;
}

}  // namespace relib::agent
