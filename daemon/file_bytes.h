// Moving the bytes of open files: the copy loop and the write loop that
// relibd's module copies (daemon/module_file.h) and its module table
// (daemon/module_table.h) share.
#ifndef RELIB_DAEMON_FILE_BYTES_H_
#define RELIB_DAEMON_FILE_BYTES_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace relib::daemon {

// Reads up to `len` bytes at `offset`; returns how many (fewer only at EOF),
// -1 with errno on error. Retries EINTR.
ssize_t ReadAt(int fd, void* out, size_t len, off_t offset);

// Writes all `len` bytes at the fd's offset. Retries EINTR and short writes.
absl::Status WriteAll(int fd, const char* data, size_t len);

// Copies `in` from offset 0 to `out` (at its offset), at most `limit + 1`
// bytes; returns the number copied (limit + 1 means "more than the limit").
// In the kernel (copy_file_range) where it can, through a buffer across file
// systems that do not support that. REQUIRES: limit < UINT64_MAX.
absl::StatusOr<uint64_t> CopyBounded(int in, int out, uint64_t limit);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_FILE_BYTES_H_
