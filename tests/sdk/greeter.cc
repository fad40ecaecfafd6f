// A module as its author writes it outside relibd's tree: only the installed SDK.
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {
std::string Greet(std::string_view who) { return "installed SDK greets " + std::string(who); }
}  // namespace

RELIB_MODULE("greeter", nullptr, nullptr, relib::Export<Greet>("greet"));
