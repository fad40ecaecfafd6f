// relibd's intake of a user's module file: refuses what cannot be a module
// (missing, not a regular file, too large, not ELF) before copying a byte,
// then copies the very file it checked.
#ifndef RELIB_DAEMON_MODULE_FILE_H_
#define RELIB_DAEMON_MODULE_FILE_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace relib::daemon {

// Default of relibd --max-module-size-mb.
inline constexpr uint64_t kDefaultMaxModuleSizeMb = 512;

// Opens `path` once (O_RDONLY | O_NONBLOCK, so a FIFO cannot block), checks
// through that fd that it is a regular file of at most `max_bytes` bytes that
// starts with the ELF magic, and copies from the same fd to `destination`
// (created or replaced; mode 0400 once complete: the copy is never written
// again, which lets a worker hard-link it instead of copying it again; with
// `group`, owned by that group and mode 0440, set through the fd before the
// copy is closed). At most `max_bytes` are copied even if the
// file grows meanwhile. Nothing is left at `destination` on error. Thread-safe.
// Errors name `path` and the reason: NOT_FOUND (no such file),
// INVALID_ARGUMENT (FIFO, device, directory, socket; over the limit; no ELF
// magic; grew past the limit while copied), the errno of open (e.g.
// PERMISSION_DENIED), INTERNAL if `destination` cannot be written.
// `spare`: an unnamed file (O_TMPFILE, empty, writable) in `destination`'s
// directory to copy into instead of creating one; it is linked at
// `destination` once complete and read-only.
absl::Status CopyModuleFile(const std::string& path, const std::string& destination, uint64_t max_bytes,
                            std::optional<gid_t> group = std::nullopt, common::UniqueFd spare = {});

// CopyModuleFile in two steps, for a caller that lets another process copy
// from the same open file while it makes its own copy.
struct ModuleSource {
  common::UniqueFd fd;  // read-only; copies read it by offset, never its position
  uint64_t size = 0;    // at the open
};
// The checks of CopyModuleFile, through one open of `path`; the same errors.
absl::StatusOr<ModuleSource> OpenModuleSource(const std::string& path, uint64_t max_bytes);
// The copy of CopyModuleFile from an opened source (`path` for messages);
// the same contract and errors.
absl::Status CopyModuleSource(const ModuleSource& source, const std::string& path, const std::string& destination,
                              uint64_t max_bytes, std::optional<gid_t> group = std::nullopt,
                              common::UniqueFd spare = {});

// Takes a read lease on `fd` (open read-only): while it is held, the file's
// bytes cannot change. The kernel grants it only if no description of the
// inode is open for writing anywhere (a writable shared mapping keeps one
// open), and an open for writing or a truncate() of the file then waits until
// ReleaseReadLease (a rename over its name does not change this inode). A
// would-be writer's lease break sends no signal (the lease has no signal
// owner). False if not granted: a writer has it open, leases are disabled,
// the file system cannot, or relibd neither owns the file nor has CAP_LEASE.
bool TakeReadLease(int fd);
void ReleaseReadLease(int fd);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_MODULE_FILE_H_
