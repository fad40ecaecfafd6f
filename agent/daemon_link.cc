#include "agent/daemon_link.h"

#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "common/fd_passing.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "common/frame_io.h"
#include "relib/v1/worker_link.pb.h"

namespace relib::agent {

absl::Status DaemonLink::Send(const v1::link::FromWorker& message) {
  std::lock_guard<std::mutex> lock(send_mutex_);
  return common::WriteFrame(fd_.get(), message, frame_limit_);
}

namespace {

// A frame bigger than this leaves the receive buffer to be freed after it.
constexpr size_t kKeepReceiveBuffer = 4 << 20;

}  // namespace

absl::Status DaemonLink::SendCallReply(const v1::link::Reply& reply, std::string_view output) {
  using google::protobuf::io::CodedOutputStream;
  // FromWorker{reply{...reply, call{...call, output}}}: the output field is
  // written last, by the tail.
  const v1::link::CallResult& call = reply.call();
  const size_t call_size = call.ByteSizeLong() + 1 + CodedOutputStream::VarintSize64(output.size()) + output.size();
  v1::link::Reply head = reply;
  head.clear_call();
  const size_t reply_size = head.ByteSizeLong() + 1 + CodedOutputStream::VarintSize64(call_size) + call_size;
  const size_t total = 1 + CodedOutputStream::VarintSize64(reply_size) + reply_size;
  if (total > frame_limit_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("message of ", total, " bytes exceeds the link limit of ", frame_limit_, " bytes"));
  }
  std::string frame(common::kFrameHeaderBytes + total - output.size(), '\0');
  common::EncodeFrameHeader(static_cast<uint32_t>(total), reinterpret_cast<unsigned char*>(frame.data()));
  {
    google::protobuf::io::ArrayOutputStream array(frame.data() + common::kFrameHeaderBytes,
                                                  static_cast<int>(frame.size() - common::kFrameHeaderBytes));
    CodedOutputStream out(&array);
    out.WriteTag(2 << 3 | 2);  // FromWorker.reply
    out.WriteVarint64(reply_size);
    head.SerializeWithCachedSizes(&out);
    out.WriteTag(6 << 3 | 2);  // Reply.call
    out.WriteVarint64(call_size);
    call.SerializeWithCachedSizes(&out);
    out.WriteTag(1 << 3 | 2);  // CallResult.output
    out.WriteVarint64(output.size());
    if (out.HadError()) return absl::InternalError("cannot serialize link message");
  }
  std::lock_guard<std::mutex> lock(send_mutex_);
  return common::WriteAll(fd_.get(), frame, output);
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
  absl::Status status = common::ReadFrame(fd_.get(), message, frame_limit_, &receive_buffer_);
  if (receive_buffer_.size() > kKeepReceiveBuffer) std::string().swap(receive_buffer_);
  return status;
}

}  // namespace relib::agent
