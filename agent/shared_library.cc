#include "agent/shared_library.h"

#include <dlfcn.h>

#include "agent/dlopen_tracker.h"

namespace relib::agent {

absl::StatusOr<SharedLibrary> SharedLibrary::Open(const std::string& path) {
  // Not ::dlopen: that is the module-attributing interposer, and this runs in module scope.
  void* handle = libraries::OpenAsHost(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* error = ::dlerror();
    return absl::InvalidArgumentError(std::string("dlopen failed: ") + (error ? error : "unknown error"));
  }
  return SharedLibrary(handle);
}

SharedLibrary& SharedLibrary::operator=(SharedLibrary&& other) noexcept {
  if (this != &other) {
    SharedLibrary discard(std::exchange(handle_, nullptr));
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

SharedLibrary::~SharedLibrary() { Close().IgnoreError(); }

void* SharedLibrary::Symbol(const char* name) const {
  return handle_ == nullptr ? nullptr : ::dlsym(handle_, name);
}

absl::Status SharedLibrary::Close() {
  if (handle_ == nullptr) return absl::OkStatus();
  void* handle = std::exchange(handle_, nullptr);
  if (libraries::CloseAsHost(handle) != 0) {  // the same handle may be a module's own dlopen too
    const char* error = ::dlerror();
    return absl::InternalError(std::string("dlclose failed: ") + (error ? error : "unknown error"));
  }
  return absl::OkStatus();
}

}  // namespace relib::agent
