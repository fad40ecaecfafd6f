// A module that dlopens its own file in on_load and never dlcloses it: the
// extra reference keeps it mapped.
#include <dlfcn.h>

#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {
std::string Ping(std::string_view) { return "pong"; }
void OnLoad(relib::Host) {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&Ping), &info) == 0 || dlopen(info.dli_fname, RTLD_NOW) == nullptr) {
    throw relib::Error("self dlopen failed");
  }
}
}  // namespace

RELIB_MODULE("self-dlopen", OnLoad, nullptr, relib::Export<Ping>("ping"));
