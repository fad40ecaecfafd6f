// Test module built twice (VERSION=1 and VERSION=2) to prove that a reload
// really changes behaviour, plus exports that fail, crash and hang.
#include <signal.h>
#include <unistd.h>

#include <string>
#include <string_view>

#include "relib/module.hpp"

#ifndef VERSION
#error "VERSION must be defined"
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

namespace {

int calls = 0;

std::string Version(std::string_view) { return "v" STR(VERSION); }
std::string Echo(std::string_view input) { return std::string(input); }
std::string Count(std::string_view) { return std::to_string(++calls); }
std::string Fail(std::string_view input) { throw relib::Error("asked to fail: " + std::string(input)); }
std::string Crash(std::string_view) {
  ::raise(SIGSEGV);
  return "unreachable";
}
std::string Hang(std::string_view) {
  for (;;) ::pause();
}
std::string Exit(std::string_view) { ::_exit(3); }

void OnLoad(relib::Host host) { host.Info("versioned v" STR(VERSION) " loaded"); }

}  // namespace

RELIB_MODULE("versioned", OnLoad, nullptr, relib::Export<Version>("version"), relib::Export<Echo>("echo"),
             relib::Export<Count>("count"), relib::Export<Fail>("fail"), relib::Export<Crash>("crash"),
             relib::Export<Hang>("hang"), relib::Export<Exit>("exit"));
