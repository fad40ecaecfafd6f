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
// `spare`: an unnamed file (O_TMPFILE, empty, writable through the fd) in
// `destination`'s directory, already in the final mode and group above
// (GoodCopyDir::TakeSpare), to copy into instead of creating one; it is
// linked at `destination` once complete.
absl::Status CopyModuleFile(const std::string& path, const std::string& destination, uint64_t max_bytes,
                            std::optional<gid_t> group = std::nullopt, common::UniqueFd spare = {});

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_MODULE_FILE_H_
