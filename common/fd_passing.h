// Passing file descriptors between processes over a Unix socket (SCM_RIGHTS),
// one fd per one-byte message: the fd channel of the worker link.
#ifndef RELIB_COMMON_FD_PASSING_H_
#define RELIB_COMMON_FD_PASSING_H_

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace relib::common {

// Sends a duplicate of `fd` (the caller keeps `fd`). Errors: the sendmsg errno.
absl::Status SendFd(int socket, int fd, bool nonblocking = false);

// Receives one fd (O_CLOEXEC). `blocking` false: UNAVAILABLE if none is
// queued. Errors: the recvmsg errno; DATA_LOSS for a message without an fd;
// UNAVAILABLE at EOF.
absl::StatusOr<UniqueFd> ReceiveFd(int socket, bool blocking);

}  // namespace relib::common

#endif  // RELIB_COMMON_FD_PASSING_H_
