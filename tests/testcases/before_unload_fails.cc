// A module whose before_unload throws: unload is refused unless forced.
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {
std::string Version(std::string_view) { return "stubborn"; }
void BeforeUnload() { throw relib::Error("still flushing"); }
}  // namespace

RELIB_MODULE("before-unload-fails", nullptr, BeforeUnload, relib::Export<Version>("version"));
