#include "common/frame_io.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/message_lite.h"

namespace relib::common {
namespace {

// Reads exactly `len` bytes; returns the number read before EOF on EOF.
absl::StatusOr<size_t> ReadFully(int fd, void* data, size_t len) {
  auto* out = static_cast<unsigned char*>(data);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::read(fd, out + done, len - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "read from link");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

void EncodeFrameHeader(uint32_t length, unsigned char out[kFrameHeaderBytes]) {
  for (size_t i = 0; i < kFrameHeaderBytes; ++i) out[i] = (length >> (8 * i)) & 0xff;
}

uint32_t DecodeFrameHeader(const unsigned char in[kFrameHeaderBytes]) {
  uint32_t length = 0;
  for (size_t i = 0; i < kFrameHeaderBytes; ++i) length |= uint32_t{in[i]} << (8 * i);
  return length;
}

absl::Status EncodeFrame(const google::protobuf::MessageLite& message, std::string* frame, uint64_t limit) {
  size_t size = message.ByteSizeLong();
  if (size > limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("message of ", size, " bytes exceeds the link limit of ", limit, " bytes"));
  }
  frame->resize(kFrameHeaderBytes);
  EncodeFrameHeader(static_cast<uint32_t>(size), reinterpret_cast<unsigned char*>(frame->data()));
  if (!message.AppendToString(frame)) return absl::InternalError("cannot serialize link message");
  return absl::OkStatus();
}

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message, uint64_t limit) {
  std::string frame;
  if (absl::Status status = EncodeFrame(message, &frame, limit); !status.ok()) return status;
  return WriteAll(fd, frame, {});
}

absl::Status WriteAll(int fd, std::string_view head, std::string_view tail) {
  size_t done = 0;
  const size_t total = head.size() + tail.size();
  while (done < total) {
    iovec iov[2];
    int count = 0;
    if (done < head.size()) iov[count++] = {const_cast<char*>(head.data()) + done, head.size() - done};
    const size_t tail_done = done > head.size() ? done - head.size() : 0;
    if (tail.size() > tail_done) iov[count++] = {const_cast<char*>(tail.data()) + tail_done, tail.size() - tail_done};
    ssize_t n = ::writev(fd, iov, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "write to link");
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message, uint64_t limit) {
  std::string buffer;
  return ReadFrame(fd, message, limit, &buffer);
}

absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message, uint64_t limit, std::string* buffer) {
  unsigned char header[kFrameHeaderBytes];
  absl::StatusOr<size_t> got = ReadFully(fd, header, sizeof(header));
  if (!got.ok()) return got.status();
  if (*got == 0) return absl::UnavailableError("link closed");
  if (*got != sizeof(header)) return absl::DataLossError("link closed inside a frame header");
  uint32_t length = DecodeFrameHeader(header);
  if (length > limit) {
    return absl::DataLossError(absl::StrCat("frame length ", length, " exceeds the link limit of ", limit, " bytes"));
  }
  if (buffer->size() < length) buffer->resize(length);
  got = ReadFully(fd, buffer->data(), length);
  if (!got.ok()) return got.status();
  if (*got != length) return absl::DataLossError("link closed inside a frame");
  if (!message->ParseFromArray(buffer->data(), static_cast<int>(length))) {
    return absl::DataLossError("unparsable link message");
  }
  return absl::OkStatus();
}

}  // namespace relib::common
