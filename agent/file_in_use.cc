#include "agent/file_in_use.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/unique_fd.h"

namespace relib::agent {

FileUse ProbeFileUse(const std::string& path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) return FileUse::kUnknown;
  // An open racing the probe breaks the lease and signals this process: make
  // that SIGURG (ignored by default), not SIGIO (which would end the worker).
  if (::fcntl(fd.get(), F_SETSIG, SIGURG) != 0) return FileUse::kUnknown;
  if (::fcntl(fd.get(), F_SETLEASE, F_WRLCK) != 0) {
    // EAGAIN is the kernel's "another description is open" (fs/locks.c
    // check_conflicting_open); anything else is "cannot tell".
    return errno == EAGAIN ? FileUse::kInUse : FileUse::kUnknown;
  }
  // Taking the lease made this process the signal owner of a lease break;
  // no owner means no signal at all if an open races us before the unlock.
  ::fcntl(fd.get(), F_SETOWN, 0);
  ::fcntl(fd.get(), F_SETLEASE, F_UNLCK);
  return FileUse::kUnused;
}

FileUse ProbeFileUseSettled(const std::string& path) {
  FileUse use = ProbeFileUse(path);
  for (int retry = 0; retry < 3 && use == FileUse::kInUse; ++retry) {
    ::usleep(100);
    use = ProbeFileUse(path);
  }
  return use;
}

bool ProbeSeesMappings(const std::string& path) {
  if (ProbeFileUseSettled(path) != FileUse::kUnused) return false;
  void* page = MAP_FAILED;
  {
    common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    struct stat st;
    if (!fd.valid() || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
    page = ::mmap(nullptr, 1, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  }
  if (page == MAP_FAILED) return false;
  const bool seen = ProbeFileUse(path) == FileUse::kInUse;  // only the mapping holds the file now
  ::munmap(page, 1);
  return seen;
}

}  // namespace relib::agent
