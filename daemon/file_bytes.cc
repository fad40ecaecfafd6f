#include "daemon/file_bytes.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

namespace relib::daemon {

ssize_t ReadAt(int fd, void* out, size_t len, off_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, static_cast<char*>(out) + done, len - done, offset + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

absl::Status WriteAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = ::write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, "write");
    data += n;
    len -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> CopyBounded(int in, int out, uint64_t limit) {
  uint64_t copied = 0;
  off_t in_offset = 0;
  bool kernel_copy = true;
  std::string buffer;
  while (copied <= limit) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(limit + 1 - copied, 1u << 20));
    ssize_t n;
    if (kernel_copy) {
      n = ::copy_file_range(in, &in_offset, out, nullptr, chunk, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        kernel_copy = false;  // across file systems or unsupported: copy through user space
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return absl::ErrnoToStatus(errno, "copy_file_range");
    } else {
      buffer.resize(chunk);
      n = ReadAt(in, buffer.data(), chunk, in_offset);
      if (n < 0) return absl::ErrnoToStatus(errno, "read");
      if (absl::Status written = WriteAll(out, buffer.data(), static_cast<size_t>(n)); !written.ok()) return written;
      in_offset += n;
    }
    if (n == 0) break;
    copied += static_cast<uint64_t>(n);
  }
  return copied;
}

}  // namespace relib::daemon
