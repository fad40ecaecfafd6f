// A module of about 1 MiB (read-only data it really uses), for what changes
// with the size of a module file.
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {

// Initialized, so all of it is in the file (.rodata), not in .bss.
constexpr size_t kBytes = 1 << 20;
const volatile unsigned char kTable[kBytes] = {1, 2, 3};

std::string Sum(std::string_view) {
  unsigned long sum = 0;
  for (size_t i = 0; i < kBytes; ++i) sum += kTable[i];
  return std::to_string(sum);
}

}  // namespace

RELIB_MODULE("large", nullptr, nullptr, relib::Export<Sum>("sum"));
