#include "agent/daemon_link.h"

#include "common/frame_io.h"
#include "relib/v1/worker_link.pb.h"

namespace relib::agent {

absl::Status DaemonLink::Send(const v1::link::FromWorker& message) {
  std::lock_guard<std::mutex> lock(send_mutex_);
  return common::WriteFrame(fd_.get(), message);
}

absl::Status DaemonLink::Receive(v1::link::ToWorker* command) { return common::ReadFrame(fd_.get(), command); }

}  // namespace relib::agent
