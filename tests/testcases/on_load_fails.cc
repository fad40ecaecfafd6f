// A module whose on_load reports failure (by throwing, through the C++ SDK).
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {
std::string Version(std::string_view) { return "never"; }
void OnLoad(relib::Host) { throw relib::Error("database not reachable"); }
}  // namespace

RELIB_MODULE("on-load-fails", OnLoad, nullptr, relib::Export<Version>("version"));
