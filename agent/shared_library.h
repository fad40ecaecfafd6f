// Move-only owner of one dlopen handle.
#ifndef RELIB_AGENT_SHARED_LIBRARY_H_
#define RELIB_AGENT_SHARED_LIBRARY_H_

#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace relib::agent {

class SharedLibrary {
 public:
  // dlopen(path, RTLD_NOW | RTLD_LOCAL). Errors: INVALID_ARGUMENT with dlerror().
  static absl::StatusOr<SharedLibrary> Open(const std::string& path);

  SharedLibrary(SharedLibrary&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  SharedLibrary& operator=(SharedLibrary&& other) noexcept;
  SharedLibrary(const SharedLibrary&) = delete;
  SharedLibrary& operator=(const SharedLibrary&) = delete;
  // dlclose unless Close() was called.
  ~SharedLibrary();

  // The address of `name`, or nullptr if the library does not define it.
  void* Symbol(const char* name) const;
  // dlclose now. Errors: INTERNAL with dlerror(). The handle is gone either way.
  absl::Status Close();
  // Forgets the handle without dlclose: the library stays mapped for the
  // life of the process (code a thread still runs).
  void Release() { handle_ = nullptr; }

 private:
  explicit SharedLibrary(void* handle) : handle_(handle) {}
  void* handle_ = nullptr;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_SHARED_LIBRARY_H_
