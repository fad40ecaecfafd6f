// The smallest C++ relib module: one export that greets. scripts/demo edits
// kGreeting, rebuilds, and reloads it while relibd keeps running.
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {

constexpr std::string_view kGreeting = "Hello";

std::string Greet(std::string_view who) {
  return std::string(kGreeting) + ", " + std::string(who.empty() ? "world" : who) + "!";
}

void OnLoad(relib::Host host) { host.Info("hello module loaded, greeting: " + std::string(kGreeting)); }

void BeforeUnload() { relib::ThisHost().Info("hello module unloading"); }

}  // namespace

RELIB_MODULE("hello", OnLoad, BeforeUnload, relib::Export<Greet>("greet"));
