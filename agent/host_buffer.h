// The host side of relib_buffer: a std::string the module appends to.
#ifndef RELIB_AGENT_HOST_BUFFER_H_
#define RELIB_AGENT_HOST_BUFFER_H_

#include <cstdint>
#include <string>

#include "agent/module_context.h"
#include "common/message_limits.h"
#include "relib/module.h"

namespace relib::agent {

// Pass `abi()` to the module; read `data()` afterwards. Holds at most
// `limit` bytes: an append that would go past it is refused with RELIB_ERROR,
// and so is every later one (the output is incomplete whatever follows);
// overflowed() then tells the caller, and attempted() how large the output
// would have been at least. Not thread-safe; lives on the caller's stack for
// the duration of one module call.
class HostBuffer {
 public:
  explicit HostBuffer(uint64_t limit = common::OutputLimit(common::MegabytesToBytes(common::kDefaultMaxMessageMb)))
      : limit_(limit) {
    abi_.host_context = this;
    abi_.append = &Append;
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  relib_buffer* abi() { return &abi_; }
  std::string& data() { return data_; }
  uint64_t limit() const { return limit_; }
  bool overflowed() const { return attempted_ > limit_; }
  // The bytes kept plus every refused append's bytes.
  uint64_t attempted() const { return overflowed() ? attempted_ : data_.size(); }

 private:
  static int Append(relib_buffer* self, const void* bytes, size_t len) noexcept {
    auto* buffer = static_cast<HostBuffer*>(self->host_context);
    if (buffer->overflowed() || len > buffer->limit_ - buffer->data_.size()) {
      buffer->attempted_ = (buffer->overflowed() ? buffer->attempted_ : buffer->data_.size()) + len;
      return RELIB_ERROR;
    }
    HostScope host;  // the host owns this memory, not the calling module
    try {
      buffer->data_.append(static_cast<const char*>(bytes), len);
      return RELIB_OK;
    } catch (...) {
      return RELIB_ERROR;
    }
  }

  relib_buffer abi_;
  std::string data_;
  const uint64_t limit_;
  uint64_t attempted_ = 0;  // > limit_ once an append was refused
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_HOST_BUFFER_H_
