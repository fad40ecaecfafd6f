#include "agent/daemon_link.h"

#include <poll.h>

#include <cerrno>

#include "common/fd_passing.h"
#include "common/frame_io.h"
#include "relib/v1/worker_link.pb.h"

namespace relib::agent {

absl::Status DaemonLink::Send(const v1::link::FromWorker& message) {
  std::lock_guard<std::mutex> lock(send_mutex_);
  return common::WriteFrame(fd_.get(), message, frame_limit_);
}

absl::Status DaemonLink::SendWithFd(const v1::link::FromWorker& message, int fd) {
  if (!fd_channel_.valid()) return absl::FailedPreconditionError("no fd channel to relibd");
  std::lock_guard<std::mutex> lock(send_mutex_);
  if (absl::Status sent = common::SendFd(fd_channel_.get(), fd); !sent.ok()) return sent;
  return common::WriteFrame(fd_.get(), message, frame_limit_);
}

absl::StatusOr<common::UniqueFd> DaemonLink::ReceiveFd() {
  if (!fd_channel_.valid()) return absl::FailedPreconditionError("no fd channel to relibd");
  return common::ReceiveFd(fd_channel_.get(), /*blocking=*/true);
}

absl::StatusOr<bool> DaemonLink::WaitReadable(int timeout_ms) {
  pollfd pfd{fd_.get(), POLLIN, 0};
  int rc = ::poll(&pfd, 1, timeout_ms);
  if (rc < 0) {
    if (errno == EINTR) return false;
    return absl::ErrnoToStatus(errno, "poll on link");
  }
  return rc > 0;
}

absl::Status DaemonLink::Receive(v1::link::ToWorker* command) {
  return common::ReadFrame(fd_.get(), command, frame_limit_);
}

}  // namespace relib::agent
