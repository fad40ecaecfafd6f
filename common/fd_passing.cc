#include "common/fd_passing.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace relib::common {

absl::Status SendFd(int socket, int fd, bool nonblocking) {
  char byte = 'F';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof(control);
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(header), &fd, sizeof(int));
  ssize_t rc;
  do {
    rc = ::sendmsg(socket, &message, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return absl::ErrnoToStatus(errno, "sendmsg on the fd channel");
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> ReceiveFd(int socket, bool blocking) {
  char byte;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof(control);
  ssize_t rc;
  do {
    rc = ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC | (blocking ? 0 : MSG_DONTWAIT));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return absl::UnavailableError("no fd queued on the fd channel");
    return absl::ErrnoToStatus(errno, "recvmsg on the fd channel");
  }
  if (rc == 0) return absl::UnavailableError("fd channel closed");
  if (message.msg_flags & MSG_CTRUNC) {
    // The kernel took the message off the channel and closed its fd.
    return absl::ResourceExhaustedError(
        "the fd passed on the fd channel was dropped (no free fd in this process: RLIMIT_NOFILE reached)");
  }
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  if (header == nullptr || header->cmsg_type != SCM_RIGHTS || header->cmsg_len != CMSG_LEN(sizeof(int))) {
    return absl::DataLossError("fd channel message without an fd");
  }
  int fd;
  std::memcpy(&fd, CMSG_DATA(header), sizeof(int));
  return UniqueFd(fd);
}

}  // namespace relib::common
