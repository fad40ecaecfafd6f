// Module the benchmarks call and reload: an echo, a crash on request, and an
// export that holds fds open. Built twice (VERSION 1 and 2) so reloads swap
// real builds; with BIG_BLOB it carries ~5 MB of read-only data, the large
// module of the reload figures.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <string>
#include <string_view>
#include <vector>

#include "relib/module.hpp"

#ifndef VERSION
#error "VERSION must be defined"
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

namespace {

#ifdef BIG_BLOB
// Initialised, so it is stored in the file (.rodata), not reserved as .bss.
__attribute__((used)) const unsigned char kBlob[5 << 20] = {1};
#endif

std::vector<int> held_fds;

std::string Version(std::string_view) { return "v" STR(VERSION); }
std::string Echo(std::string_view input) { return std::string(input); }
std::string Crash(std::string_view) {
  ::raise(SIGSEGV);
  return "unreachable";
}
// Opens /dev/null until the module holds `input` (decimal) fds; returns how many.
std::string HoldFds(std::string_view input) {
  size_t wanted = std::stoul(std::string(input));
  while (held_fds.size() < wanted) {
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw relib::Error("open /dev/null failed");
    held_fds.push_back(fd);
  }
  return std::to_string(held_fds.size());
}

// Closes every fd HoldFds opened; returns how many were closed.
std::string ReleaseFds(std::string_view) {
  size_t closed = held_fds.size();
  for (int fd : held_fds) ::close(fd);
  held_fds.clear();
  return std::to_string(closed);
}

}  // namespace

RELIB_MODULE("bench_echo", nullptr, nullptr, relib::Export<Version>("version"), relib::Export<Echo>("echo"),
             relib::Export<Crash>("crash"), relib::Export<HoldFds>("hold_fds"), relib::Export<ReleaseFds>("release_fds"));
