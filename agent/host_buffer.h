// The host side of relib_buffer: a std::string the module appends to.
#ifndef RELIB_AGENT_HOST_BUFFER_H_
#define RELIB_AGENT_HOST_BUFFER_H_

#include <string>

#include "agent/module_context.h"
#include "relib/module.h"

namespace relib::agent {

// Pass `abi()` to the module; read `data()` afterwards. Not thread-safe; lives
// on the caller's stack for the duration of one module call.
class HostBuffer {
 public:
  HostBuffer() { abi_.host_context = this; abi_.append = &Append; }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  relib_buffer* abi() { return &abi_; }
  std::string& data() { return data_; }

 private:
  static int Append(relib_buffer* self, const void* bytes, size_t len) noexcept {
    auto* buffer = static_cast<HostBuffer*>(self->host_context);
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
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_HOST_BUFFER_H_
