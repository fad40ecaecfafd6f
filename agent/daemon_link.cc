#include "agent/daemon_link.h"

#include <sys/socket.h>

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

void DaemonLink::ShutdownReading() { ::shutdown(fd_.get(), SHUT_RD); }

absl::Status DaemonLink::Receive(v1::link::ToWorker* message) {
  return common::ReadFrame(fd_.get(), message, frame_limit_);
}

}  // namespace relib::agent
