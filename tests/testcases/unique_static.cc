// An inline static member of a class template: g++ emits it as
// STB_GNU_UNIQUE unless built with -fno-gnu-unique, and glibc then never
// unmaps the library.
#include <string>
#include <string_view>

#include "relib/module.hpp"

template <typename T>
struct Counter {
  static inline int count = 0;
};

namespace {
std::string Bump(std::string_view) { return std::to_string(++Counter<int>::count); }
}  // namespace

RELIB_MODULE("unique-static", nullptr, nullptr, relib::Export<Bump>("bump"));
