// The reload baseline's work (copy + dlopen + dlsym + dlclose of a module),
// shared by the harness, which times it in process, and the forwarding
// server's child, which does it between request and reply for the one-piece
// design floor: the floor is the baseline's work by construction.
#ifndef RELIB_BENCH_RELOAD_BASELINE_H_
#define RELIB_BENCH_RELOAD_BASELINE_H_

#include <dlfcn.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "relib/module.h"

namespace relib::bench {

// An input to the forwarding server that starts with this, followed by a
// module's path, makes its child run CopyDlopen on that path and answer "ok".
inline constexpr char kReloadFloorPrefix[] = "relib-bench-reload-floor:";

// Copies `path` to `copy`, dlopens the copy, looks up the module descriptor,
// dlcloses it and removes the copy. `dlclose_time`, if set, receives the
// dlclose's own time.
inline absl::Status CopyDlopen(const std::string& path, const std::string& copy,
                               std::chrono::steady_clock::duration* dlclose_time = nullptr) {
  std::error_code error;
  std::filesystem::copy_file(path, copy, std::filesystem::copy_options::overwrite_existing, error);
  if (error) return absl::InternalError(absl::StrCat("copy of ", path, ": ", error.message()));
  void* handle = ::dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return absl::InternalError(::dlerror());
  const bool found = ::dlsym(handle, RELIB_DESCRIPTOR_SYMBOL_NAME) != nullptr;
  const auto closing = std::chrono::steady_clock::now();
  ::dlclose(handle);
  if (dlclose_time != nullptr) *dlclose_time = std::chrono::steady_clock::now() - closing;
  std::filesystem::remove(copy, error);
  if (!found) return absl::NotFoundError(absl::StrCat(path, " has no module descriptor"));
  return absl::OkStatus();
}

}  // namespace relib::bench

#endif  // RELIB_BENCH_RELOAD_BASELINE_H_
