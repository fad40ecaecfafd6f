// C++ sugar over relib/module.h: exports written as
// `std::string Fn(std::string_view input)`, hooks as plain functions that
// throw to fail. Every exception is caught at the boundary and becomes an
// error result; none crosses the C ABI.
//
//   std::string Greet(std::string_view who) { return "hello " + std::string(who); }
//   void OnLoad(relib::Host host) { host.Info("ready"); }
//   RELIB_MODULE("hello", OnLoad, nullptr, relib::Export<Greet>("greet"));
//
// RELIB_MODULE must appear in exactly one translation unit of a module.
#ifndef RELIB_MODULE_HPP_
#define RELIB_MODULE_HPP_

#include <cstddef>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "relib/module.h"

// Host services of the running module; defined by RELIB_MODULE, set during
// on_load, hidden so it is never exported or shared between modules.
extern "C" __attribute__((visibility("hidden"))) const relib_host_api* relib_module_host;

namespace relib {

namespace detail {
// Why the SDK itself refused the calling thread's last host call (the host
// never saw it), or null. Trivial type: no destructor pins the module.
inline thread_local const char* sdk_error = nullptr;
}  // namespace detail

// Thrown (or any std::exception) by module code to fail a hook or an export
// with a message.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Handle to the host's services. Cheap to copy; valid between on_load and the
// end of before_unload. Calls are thread-safe.
class Host {
 public:
  explicit Host(const relib_host_api* api) : api_(api) {}

  void Log(int level, std::string_view text) const {
    if (api_ != nullptr && api_->log != nullptr) {
      api_->log(api_->host_context, level, text.data(), text.size());
    }
  }
  void Debug(std::string_view text) const { Log(RELIB_LOG_DEBUG, text); }
  void Info(std::string_view text) const { Log(RELIB_LOG_INFO, text); }
  void Warn(std::string_view text) const { Log(RELIB_LOG_WARN, text); }
  void Error(std::string_view text) const { Log(RELIB_LOG_ERROR, text); }

  // State store (see relib_host_api): survives reloads and worker crashes.
  // True once relibd holds the bytes; false if it cannot (LastError says
  // why: a full store, a size limit). Keys are C strings: a key with a NUL
  // inside is refused, never cut short into another key.
  bool SaveState(const std::string& key, std::string_view bytes) const {
    return api_ != nullptr && api_->save_state != nullptr && ValidKey(key) &&
           api_->save_state(api_->host_context, key.c_str(), bytes.data(), bytes.size()) == RELIB_OK;
  }
  // The saved bytes, or std::nullopt if nothing was saved under `key`.
  std::optional<std::string> LoadState(const std::string& key) const {
    if (api_ == nullptr || api_->load_state == nullptr || !ValidKey(key)) return std::nullopt;
    std::string bytes;
    relib_buffer out{&bytes, [](relib_buffer* self, const void* data, size_t len) noexcept -> int {
                       static_cast<std::string*>(self->host_context)->append(static_cast<const char*>(data), len);
                       return RELIB_OK;
                     }};
    if (api_->load_state(api_->host_context, key.c_str(), &out) != RELIB_OK) return std::nullopt;
    return bytes;
  }
  // fd store (see relib_host_api).
  bool StoreFd(const std::string& key, int fd) const {
    return api_ != nullptr && api_->store_fd != nullptr && ValidKey(key) &&
           api_->store_fd(api_->host_context, key.c_str(), fd) == RELIB_OK;
  }
  // A new fd the caller owns, or -1.
  int TakeFd(const std::string& key) const {
    return api_ != nullptr && api_->take_fd != nullptr && ValidKey(key) ? api_->take_fd(api_->host_context, key.c_str())
                                                                       : -1;
  }
  // Why the calling thread's last failed host call failed ("" if unknown).
  std::string LastError() const {
    std::string text;
    if (detail::sdk_error != nullptr) return detail::sdk_error;
    if (api_ == nullptr || api_->last_error == nullptr) return text;
    relib_buffer out{&text, [](relib_buffer* self, const void* data, size_t len) noexcept -> int {
                       static_cast<std::string*>(self->host_context)->append(static_cast<const char*>(data), len);
                       return RELIB_OK;
                     }};
    api_->last_error(api_->host_context, &out);
    return text;
  }

 private:
  // A key the C ABI can carry unchanged (no NUL inside).
  static bool ValidKey(const std::string& key) {
    if (key.find('\0') == std::string::npos) {
      detail::sdk_error = nullptr;
      return true;
    }
    detail::sdk_error = "a key with a NUL byte inside cannot be passed to the host (keys are C strings)";
    return false;
  }

  const relib_host_api* api_;
};

// The host of this module (a no-op logger before on_load).
inline Host ThisHost() { return Host(relib_module_host); }

namespace detail {

// False if the host refused the bytes (e.g. output over relibd's limit).
inline bool Append(relib_buffer* buffer, std::string_view text) noexcept {
  return buffer != nullptr && buffer->append(buffer, text.data(), text.size()) == RELIB_OK;
}

// Runs `body`, turning any exception into an error code plus message.
template <typename Body>
int Guarded(relib_buffer* error, Body&& body) noexcept {
  try {
    body();
    return RELIB_OK;
  } catch (const std::exception& e) {
    Append(error, e.what());
  } catch (...) {
    Append(error, "unknown C++ exception");
  }
  return RELIB_ERROR_EXCEPTION;
}

template <auto Fn>
int ExportThunk(const void* in, size_t in_len, relib_buffer* out) noexcept {
  bool taken = true;
  int rc = Guarded(out, [&] {
    std::string result = Fn(std::string_view(static_cast<const char*>(in), in_len));
    taken = Append(out, result);
  });
  // A refused output is a failed call; the host says why (its limit).
  return rc == RELIB_OK && !taken ? RELIB_ERROR : rc;
}

template <auto Fn>
int OnLoadThunk(const relib_host_api* host, relib_buffer* error) noexcept {
  relib_module_host = host;
  return Guarded(error, [&] { Fn(Host(host)); });
}

template <auto Fn>
int BeforeUnloadThunk(relib_buffer* error) noexcept {
  return Guarded(error, [&] { Fn(); });
}

template <auto Fn>
constexpr auto OnLoadHook() {
  if constexpr (std::is_same_v<decltype(Fn), std::nullptr_t>) {
    return +[](const relib_host_api* host, relib_buffer*) noexcept -> int {
      relib_module_host = host;
      return RELIB_OK;
    };
  } else {
    return &OnLoadThunk<Fn>;
  }
}

template <auto Fn>
constexpr auto BeforeUnloadHook() {
  if constexpr (std::is_same_v<decltype(Fn), std::nullptr_t>) {
    return static_cast<int (*)(relib_buffer*)>(nullptr);
  } else {
    return &BeforeUnloadThunk<Fn>;
  }
}

}  // namespace detail

// An export entry for RELIB_MODULE. Fn: std::string(std::string_view).
template <auto Fn>
constexpr relib_export Export(const char* name) {
  return relib_export{name, &detail::ExportThunk<Fn>};
}

}  // namespace relib

// Defines the module's descriptor. ON_LOAD: void(relib::Host) or nullptr;
// BEFORE_UNLOAD: void() or nullptr; then one or more relib::Export<Fn>("name").
#define RELIB_MODULE(NAME, ON_LOAD, BEFORE_UNLOAD, ...) \
  RELIB_MODULE_WITH_FLAGS(0u, NAME, ON_LOAD, BEFORE_UNLOAD, __VA_ARGS__)

// As RELIB_MODULE, for a module whose exports may run on several threads at
// once (RELIB_MODULE_FLAG_THREAD_SAFE; see relib/module.h).
#define RELIB_MODULE_THREAD_SAFE(NAME, ON_LOAD, BEFORE_UNLOAD, ...) \
  RELIB_MODULE_WITH_FLAGS(RELIB_MODULE_FLAG_THREAD_SAFE, NAME, ON_LOAD, BEFORE_UNLOAD, __VA_ARGS__)

#define RELIB_MODULE_WITH_FLAGS(FLAGS, NAME, ON_LOAD, BEFORE_UNLOAD, ...)      \
  const relib_host_api* relib_module_host = nullptr;                            \
  static const relib_export relib_module_exports_[] = {__VA_ARGS__};           \
  extern "C" __attribute__((visibility("default")))                             \
  const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {                     \
      RELIB_ABI_VERSION,                                                        \
      NAME,                                                                     \
      ::relib::detail::OnLoadHook<ON_LOAD>(),                                   \
      ::relib::detail::BeforeUnloadHook<BEFORE_UNLOAD>(),                       \
      relib_module_exports_,                                                    \
      sizeof(relib_module_exports_) / sizeof(relib_module_exports_[0]),         \
      FLAGS}

#endif  // RELIB_MODULE_HPP_
