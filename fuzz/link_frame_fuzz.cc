// Fuzz target: the worker link's frame decoder and messages. The input is
// written to one end of a socketpair and read back frame by frame as relibd
// and the worker read the link (ReadFrame into FromWorker / ToWorker), then
// each parsed message is re-encoded (as a reply would be).
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "google/protobuf/stubs/logging.h"
#include <thread>

#include "common/frame_io.h"
#include "relib/v1/worker_link.pb.h"

namespace {

// Small limit: a length above it must be refused, not allocated.
constexpr uint64_t kLimit = 1 << 20;

template <typename Message>
void ReadAll(const uint8_t* data, size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return;
  std::thread writer([&] {
    size_t done = 0;
    while (done < size) {
      ssize_t n = ::write(fds[1], data + done, size - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::close(fds[1]);
  });
  Message message;
  for (int frames = 0; frames < 64; ++frames) {
    message.Clear();
    if (!relib::common::ReadFrame(fds[0], &message, kLimit).ok()) break;
    std::string frame;
    (void)relib::common::EncodeFrame(message, &frame, kLimit);
  }
  ::close(fds[0]);  // unblocks the writer if frames were left unread
  writer.join();
}

}  // namespace

namespace {
// Invalid UTF-8 in string fields is expected input; protobuf's log of each is noise.
const bool kQuietProtobuf = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;
  if (size >= relib::common::kFrameHeaderBytes) (void)relib::common::DecodeFrameHeader(data);
  ReadAll<relib::v1::link::FromWorker>(data, size);
  ReadAll<relib::v1::link::ToWorker>(data, size);
  return 0;
}
