// The worker's end of the daemon ⇄ worker link (framed protobuf over an
// inherited socket). Independent of which main embeds the agent.
#ifndef RELIB_AGENT_DAEMON_LINK_H_
#define RELIB_AGENT_DAEMON_LINK_H_

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/frame_io.h"
#include "common/unique_fd.h"

namespace relib::v1::link {
class ToWorker;
class FromWorker;
class Reply;
}  // namespace relib::v1::link

namespace relib::agent {

class DaemonLink {
 public:
  // `fd_channel` may be invalid (then fds cannot be passed). Frames larger
  // than `frame_limit` bytes are refused both ways (relibd uses the same
  // limit, common::LinkFrameLimit of its --max-message-mb).
  DaemonLink(common::UniqueFd fd, common::UniqueFd fd_channel,
             uint64_t frame_limit = common::kMaxFramePayloadBytes)
      : fd_(std::move(fd)), fd_channel_(std::move(fd_channel)), frame_limit_(frame_limit) {}

  // Thread-safe; any thread (module log calls included) may send.
  absl::Status Send(const v1::link::FromWorker& message);
  // Thread-safe. Sends `reply` (its CallResult, if any, without output) with
  // `output` as its call output: the output goes on the wire from where it
  // is (no copy into a frame).
  absl::Status SendCallReply(const v1::link::Reply& reply, std::string_view output);
  // Sends a duplicate of `fd` on the fd channel, then `message` announcing
  // it, atomically with respect to other senders.
  absl::Status SendWithFd(const v1::link::FromWorker& message, int fd);
  // Blocks for the next fd relibd passes (command thread only: relibd sends
  // fds just before the command that announces them).
  absl::StatusOr<common::UniqueFd> ReceiveFd();
  // Blocks for the next frame. UNAVAILABLE when relibd closed the link.
  // Only the link's one reader (LinkReader) calls it.
  absl::Status Receive(v1::link::ToWorker* message);
  // Makes a blocked or later Receive return (UNAVAILABLE): the reader's stop.
  void ShutdownReading();
  // The link's socket, for LinkReader's own non-blocking reads (nobody else
  // reads it), and the largest frame either side may send.
  int fd() const { return fd_.get(); }
  uint64_t frame_limit() const { return frame_limit_; }

 private:
  common::UniqueFd fd_;
  common::UniqueFd fd_channel_;
  const uint64_t frame_limit_;
  std::mutex send_mutex_;
  // The reader's: payload bytes of the last frame (reused, see Receive).
  std::string receive_buffer_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_DAEMON_LINK_H_
