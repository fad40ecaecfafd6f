#include "agent/process_hook_tracker.h"

#include <argp.h>
#include <dlfcn.h>
#include <error.h>
#include <obstack.h>
#include <printf.h>
#include <stdio.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <new>

#include "absl/strings/str_cat.h"
#include "agent/symbolize.h"
#include "agent/fork_lock.h"

namespace relib::agent::hooks {
namespace {

struct Cookie {
  ModuleId module;
  FILE* file;
  const void* function;  // one of its I/O functions, for the report
};
struct Specifier {
  ModuleId module;
  int spec;
  const void* function;
};

std::mutex hooks_mutex;
[[maybe_unused]] const bool hooks_mutex_held_across_fork = HoldAcrossFork<hooks_mutex>();
std::vector<Cookie>* cookies = nullptr;        // created on first use, never destroyed
std::vector<Specifier>* specifiers = nullptr;  // created on first use, never destroyed
// Lets fclose skip the lock while no module stream exists.
std::atomic<int> cookie_count{0};

std::vector<Cookie>& Cookies() {
  if (cookies == nullptr) cookies = new std::vector<Cookie>();
  return *cookies;
}
std::vector<Specifier>& Specifiers() {
  if (specifiers == nullptr) specifiers = new std::vector<Specifier>();
  return *specifiers;
}

std::terminate_handler host_terminate = nullptr;
std::new_handler host_new_handler = nullptr;
void (*host_obstack_failed)() = nullptr;

template <typename T>
T Real(const char* name) {
  HostScope host;
  return reinterpret_cast<T>(::dlsym(RTLD_NEXT, name));
}
using RegisterSpecifier = int (*)(int, printf_function*, printf_arginfo_size_function*);
using RegisterFunction = int (*)(int, printf_function*, printf_arginfo_function*);
using Fopencookie = FILE* (*)(void*, const char*, cookie_io_functions_t);
using Fclose = int (*)(FILE*);

ModuleId Owner(const void* function) {
  ModuleId owner = CurrentModule();
  return owner != kHost ? owner : ModuleOfAddress(function);
}

void RecordSpecifier(int spec, const void* function) {
  ModuleId owner = Owner(function);
  HostScope host;
  std::lock_guard<std::mutex> lock(hooks_mutex);
  std::erase_if(Specifiers(), [spec](const Specifier& s) { return s.spec == spec; });
  if (owner != kHost && function != nullptr) Specifiers().push_back({owner, spec, function});
}

// Either registration function: glibc allocates its specifier tables once,
// for the process (host scope); the converter is recorded for its module.
template <typename Register, typename Arginfo>
int RegisterPrintf(Register real, int spec, printf_function* converter, Arginfo* arginfo) {
  int rc;
  {
    HostScope host;
    rc = real(spec, converter, arginfo);
  }
  if (rc == 0) RecordSpecifier(spec, reinterpret_cast<const void*>(converter));
  return rc;
}

bool Within(const void* p, uintptr_t start, uintptr_t end) {
  auto a = reinterpret_cast<uintptr_t>(p);
  return a >= start && a < end;
}

}  // namespace

void SnapshotHost() {
  host_terminate = std::get_terminate();
  host_new_handler = std::get_new_handler();
  host_obstack_failed = obstack_alloc_failed_handler;
}

std::vector<CodeReference> ReleaseAll(ModuleId id) {
  std::vector<Cookie> streams;
  std::vector<Specifier> specs;
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(hooks_mutex);
    std::erase_if(Cookies(), [&](const Cookie& c) {
      if (c.module != id) return false;
      streams.push_back(c);
      return true;
    });
    cookie_count -= static_cast<int>(streams.size());
    std::erase_if(Specifiers(), [&](const Specifier& s) {
      if (s.module != id) return false;
      specs.push_back(s);
      return true;
    });
  }
  std::vector<CodeReference> released;
  static Fclose real_fclose = Real<Fclose>("fclose");
  static RegisterSpecifier real_register = Real<RegisterSpecifier>("register_printf_specifier");
  for (const Cookie& cookie : streams) {
    std::string what = absl::StrCat("fopencookie stream -> ", Symbolize(cookie.function));
    {
      ModuleScope scope(id);
      real_fclose(cookie.file);
    }
    released.push_back({"cookie FILE", what, "closed"});
  }
  for (const Specifier& spec : specs) {
    std::string what = absl::StrCat("%", std::string(1, static_cast<char>(spec.spec)), " -> ", Symbolize(spec.function));
    real_register(spec.spec, nullptr, nullptr);
    released.push_back({"printf specifier", what, "unregistered"});
  }
  return released;
}

std::vector<CodeReference> ResetInto(uintptr_t start, uintptr_t end) {
  std::vector<CodeReference> reset;
  auto check = [&](const char* kind, const void* current, auto restore) {
    if (current == nullptr || !Within(current, start, end)) return;
    reset.push_back({kind, Symbolize(current), "reset"});
    restore();
  };
  check("terminate handler", reinterpret_cast<const void*>(std::get_terminate()),
        [] { std::set_terminate(host_terminate); });
  check("new handler", reinterpret_cast<const void*>(std::get_new_handler()),
        [] { std::set_new_handler(host_new_handler); });
  check("error hook", reinterpret_cast<const void*>(error_print_progname), [] { error_print_progname = nullptr; });
  check("argp hook", reinterpret_cast<const void*>(argp_program_version_hook),
        [] { argp_program_version_hook = nullptr; });
  check("obstack hook", reinterpret_cast<const void*>(obstack_alloc_failed_handler),
        [] { obstack_alloc_failed_handler = host_obstack_failed; });
  return reset;
}

}  // namespace relib::agent::hooks

extern "C" {

int register_printf_specifier(int spec, printf_function* converter, printf_arginfo_size_function* arginfo) noexcept {
  static auto real = relib::agent::hooks::Real<relib::agent::hooks::RegisterSpecifier>("register_printf_specifier");
  return relib::agent::hooks::RegisterPrintf(real, spec, converter, arginfo);
}

int register_printf_function(int spec, printf_function* converter, printf_arginfo_function* arginfo) noexcept {
  static auto real = relib::agent::hooks::Real<relib::agent::hooks::RegisterFunction>("register_printf_function");
  return relib::agent::hooks::RegisterPrintf(real, spec, converter, arginfo);
}

FILE* fopencookie(void* cookie, const char* mode, cookie_io_functions_t functions) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::hooks;
  static Fopencookie real = Real<Fopencookie>("fopencookie");
  FILE* file = real(cookie, mode, functions);
  if (file == nullptr) return file;
  const void* function = functions.write  ? reinterpret_cast<const void*>(functions.write)
                         : functions.read ? reinterpret_cast<const void*>(functions.read)
                         : functions.close ? reinterpret_cast<const void*>(functions.close)
                                           : reinterpret_cast<const void*>(functions.seek);
  ModuleId owner = Owner(function);
  if (owner == kHost) return file;
  HostScope host;
  std::lock_guard<std::mutex> lock(hooks_mutex);
  Cookies().push_back({owner, file, function});
  ++cookie_count;
  return file;
}

int fclose(FILE* file) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::hooks;
  static Fclose real = Real<Fclose>("fclose");
  if (cookie_count.load(std::memory_order_relaxed) > 0) {
    HostScope host;
    std::lock_guard<std::mutex> lock(hooks_mutex);
    cookie_count -= static_cast<int>(std::erase_if(Cookies(), [file](const Cookie& c) { return c.file == file; }));
  }
  return real(file);
}

}  // extern "C"
