#include "daemon/module_file.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"
#include "daemon/file_bytes.h"

namespace relib::daemon {
namespace {

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Links the unnamed file `fd` (O_TMPFILE) at `destination`. Through the
// descriptor itself where the kernel allows it (CAP_DAC_READ_SEARCH, as
// relibd has as root; since Linux 6.10 also a file this process opened),
// else through the /proc path, which needs neither (a walk through
// /proc/self/fd, ~3 µs more, measured).
// A kernel that refused (ENOENT) refuses every time: it is not asked again.
bool LinkUnnamed(int fd, const std::string& destination) {
  static std::atomic<bool> empty_path_refused{false};
  bool refused_now = false;
  if (!empty_path_refused.load(std::memory_order_relaxed)) {
    if (::linkat(fd, "", AT_FDCWD, destination.c_str(), AT_EMPTY_PATH) == 0) return true;
    if (errno == EEXIST) return false;
    refused_now = errno == ENOENT;
  }
  const std::string self = absl::StrCat("/proc/self/fd/", fd);
  if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, destination.c_str(), AT_SYMLINK_FOLLOW) != 0) return false;
  // The same link by path worked: the ENOENT was the refusal.
  if (refused_now) empty_path_refused.store(true, std::memory_order_relaxed);
  return true;
}

// LinkUnnamed, replacing a leftover of that name.
bool NameUnnamed(int fd, const std::string& destination) {
  if (LinkUnnamed(fd, destination)) return true;
  if (errno != EEXIST) return false;
  ::unlink(destination.c_str());
  return LinkUnnamed(fd, destination);
}

}  // namespace

absl::Status CopyModuleFile(const std::string& path, const std::string& destination, uint64_t max_bytes,
                            std::optional<gid_t> group, common::UniqueFd spare) {
  common::UniqueFd in(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!in.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("module file ", path, " does not exist"));
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open module file ", path));
  }
  struct stat st;
  if (::fstat(in.get(), &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat module file ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("module file ", path, " is ", FileKind(st.st_mode), ", not a regular file"));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("module file ", path, " is ", size,
                                                   " bytes, over the limit of ", max_bytes,
                                                   " bytes (relibd --max-module-size-mb)"));
  }
  unsigned char magic[SELFMAG];
  ssize_t n = ReadAt(in.get(), magic, sizeof(magic), 0);
  if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot read module file ", path));
  if (static_cast<size_t>(n) < SELFMAG || std::memcmp(magic, ELFMAG, SELFMAG) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an ELF file (no ELF magic)"));
  }

  // Always a new inode: an earlier file of that name may be hard-linked by a
  // worker that has it mapped, and must never be rewritten. The name is
  // usually free (O_EXCL succeeds at once); only a leftover is unlinked. A
  // spare (unnamed, never seen by anyone) is such a new inode made ahead; it
  // gets the name once complete.
  common::UniqueFd out = std::move(spare);
  bool named = false;  // `destination` is this copy (to remove on error)
  const bool final_mode = out.valid();  // a spare comes in its final mode and group
  if (!out.valid()) {
    out = common::UniqueFd(::open(destination.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!out.valid() && errno == EEXIST) {
      ::unlink(destination.c_str());
      out = common::UniqueFd(::open(destination.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    }
    if (!out.valid()) {
      return absl::InternalError(absl::StrCat("cannot create relibd's copy of ", path, ": ", std::strerror(errno)));
    }
    named = true;
  }
  absl::StatusOr<uint64_t> copied = CopyBounded(in.get(), out.get(), max_bytes);
  absl::Status status;
  if (!copied.ok()) {
    status = absl::InternalError(absl::StrCat("cannot copy module file ", path, ": ", copied.status().message()));
  } else if (*copied > max_bytes) {
    status = absl::InvalidArgumentError(absl::StrCat("module file ", path, " grew past the limit of ", max_bytes,
                                                     " bytes while it was copied (relibd --max-module-size-mb)"));
  } else if (!final_mode && group && ::fchown(out.get(), static_cast<uid_t>(-1), *group) != 0) {
    status = absl::InternalError(
        absl::StrCat("cannot give the worker's group relibd's copy of ", path, ": ", std::strerror(errno)));
  } else if (!final_mode && ::fchmod(out.get(), group ? 0440 : 0400) != 0) {
    status = absl::InternalError(absl::StrCat("cannot make relibd's copy of ", path, " read-only: ", std::strerror(errno)));
  } else if (!named && !(named = NameUnnamed(out.get(), destination))) {
    status = absl::InternalError(absl::StrCat("cannot name relibd's copy of ", path, ": ", std::strerror(errno)));
  } else if (::close(out.Release()) != 0) {
    status = absl::InternalError(absl::StrCat("cannot write relibd's copy of ", path, ": ", std::strerror(errno)));
  }
  if (!status.ok() && named) ::unlink(destination.c_str());
  return status;
}

}  // namespace relib::daemon
