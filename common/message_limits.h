// The one message size limit relibd, its workers and relibctl agree on
// (--max-message-mb), and what follows from it for the worker link and for
// the output of a module's export.
#ifndef RELIB_COMMON_MESSAGE_LIMITS_H_
#define RELIB_COMMON_MESSAGE_LIMITS_H_

#include <algorithm>
#include <cstdint>

#include "common/frame_io.h"

namespace relib::common {

// Default of --max-message-mb (relibd and relibctl): gRPC's own default of
// 4 MiB is too small for real module outputs.
inline constexpr int kDefaultMaxMessageMb = 64;
// gRPC sizes are ints: at most 2047 MiB.
inline constexpr int kMaxMaxMessageMb = 2047;
// Room for what a message holds besides a module's bytes (the other fields
// of a CallResponse or of a link frame, field tags and lengths).
inline constexpr uint64_t kEnvelopeBytes = 4u << 10;
// The link's frame limit never goes below the default frame limit: load
// commands carry a module's saved state, which the gRPC limit does not bound.
inline constexpr uint64_t kMinLinkFrameBytes = kMaxFramePayloadBytes;
// Room a load command needs besides the module's saved state (name, paths,
// options, fd keys): a module's state is limited to a link frame minus this.
inline constexpr uint64_t kLoadEnvelopeBytes = 64u << 10;

constexpr uint64_t MegabytesToBytes(int megabytes) { return static_cast<uint64_t>(megabytes) << 20; }

// The largest output an export may produce so that its CallResponse fits in
// a gRPC message of `max_message_bytes`.
constexpr uint64_t OutputLimit(uint64_t max_message_bytes) {
  return max_message_bytes > kEnvelopeBytes ? max_message_bytes - kEnvelopeBytes : 0;
}

// The worker link's frame limit (both directions) for a gRPC limit of
// `max_message_bytes`: a whole gRPC message (an input, or an output up to
// OutputLimit) plus the link's own envelope always fits.
constexpr uint64_t LinkFrameLimit(uint64_t max_message_bytes) {
  return std::max(kMinLinkFrameBytes, max_message_bytes + kEnvelopeBytes);
}

}  // namespace relib::common

#endif  // RELIB_COMMON_MESSAGE_LIMITS_H_
