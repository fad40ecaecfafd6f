// Length-prefixed protobuf frames on a stream socket: the wire format of the
// daemon ⇄ worker link (see proto/relib/v1/worker_link.proto).
#ifndef RELIB_COMMON_FRAME_IO_H_
#define RELIB_COMMON_FRAME_IO_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace google::protobuf {
class MessageLite;
}

namespace relib::common {

// A frame is a 4-byte little-endian payload length, then the payload.
inline constexpr size_t kFrameHeaderBytes = 4;
// Larger frames are a protocol error (protects against garbage lengths).
// The default limit; the link's real limit follows relibd --max-message-mb
// (see common/message_limits.h) and is never below this.
inline constexpr uint32_t kMaxFramePayloadBytes = 256u << 20;

void EncodeFrameHeader(uint32_t length, unsigned char out[kFrameHeaderBytes]);
uint32_t DecodeFrameHeader(const unsigned char in[kFrameHeaderBytes]);

// Serializes `message` into one frame (header + payload). RESOURCE_EXHAUSTED
// if its payload would exceed `limit` bytes. REQUIRES: limit < 4 GiB.
absl::Status EncodeFrame(const google::protobuf::MessageLite& message, std::string* frame,
                         uint64_t limit = kMaxFramePayloadBytes);

// Blocking write of one frame. Not thread-safe per fd: callers serialize.
// Errors: as EncodeFrame, the write's errno (EPIPE when the peer is gone).
absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message,
                        uint64_t limit = kMaxFramePayloadBytes);

// Blocking write of `head` then `tail` (one writev while the socket takes
// them). Not thread-safe per fd: callers serialize. Errors: the write's errno.
absl::Status WriteAll(int fd, std::string_view head, std::string_view tail);

// Blocking read of one frame into `message`. Returns UNAVAILABLE "link closed"
// on a clean EOF before a header, DATA_LOSS on a truncated frame, a frame
// over `limit` bytes or an unparsable payload.
absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message, uint64_t limit = kMaxFramePayloadBytes);
// As above, reading the payload into `buffer` (grown as needed, kept by the
// caller for the next frame: no allocation per frame).
absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message, uint64_t limit, std::string* buffer);

}  // namespace relib::common

#endif  // RELIB_COMMON_FRAME_IO_H_
