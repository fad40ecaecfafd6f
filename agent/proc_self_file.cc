#include "agent/proc_self_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace relib::agent {

int ProcSelfFile::Get() {
  const pid_t pid = ::getpid();
  if (fd_ >= 0) {
    struct stat st;
    const bool same = ::fstat(fd_, &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_;
    if (same && pid == pid_) return fd_;
    // A forked child's copy names the parent's entry: it is this process's
    // to close. Any other mismatch: the number is not the agent's any more.
    if (same) ::close(fd_);
    fd_ = -1;
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
  fd_ = fd;
  pid_ = pid;
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  return fd_;
}

}  // namespace relib::agent
