#include "agent/symbolize.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace relib::agent {

std::string Symbolize(const void* address) {
  auto at = reinterpret_cast<uintptr_t>(address);
  Dl_info info;
  if (::dladdr(address, &info) == 0) return absl::StrCat("0x", absl::Hex(at));
  std::string file = info.dli_fname ? std::filesystem::path(info.dli_fname).filename().string() : "?";
  if (info.dli_sname == nullptr) {
    return absl::StrCat(file, "+0x", absl::Hex(at - reinterpret_cast<uintptr_t>(info.dli_fbase)));
  }
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : info.dli_sname;
  std::free(demangled);
  return absl::StrCat(name, "+0x", absl::Hex(at - reinterpret_cast<uintptr_t>(info.dli_saddr)), " (", file, ")");
}

}  // namespace relib::agent
