// Stack overflow by unbounded recursion, in an export ("overflow") or, in the
// THREAD_OVERFLOW variant, in a thread on_load starts that overflows 50 ms
// later. The THREAD_SIGKILL variant's thread SIGKILLs its own worker instead:
// a death no module can be blamed for.
#include <signal.h>
#include <unistd.h>

#include <string>
#include <string_view>
#include <thread>

#include "relib/module.hpp"

namespace {

// Read on every level so the recursion is neither a loop nor provably infinite.
volatile bool keep_going = true;

int Recurse(int depth) {
  volatile char frame[512];
  frame[0] = static_cast<char>(depth);
  if (!keep_going) return frame[0];
  return Recurse(depth + 1) + frame[0];
}

std::string Overflow(std::string_view) { return std::to_string(Recurse(0)); }
std::string Ping(std::string_view) { return "pong"; }

void OnLoad(relib::Host) {
#if defined(THREAD_OVERFLOW) || defined(THREAD_SIGKILL)
  std::thread([] {
    ::usleep(50000);
#ifdef THREAD_OVERFLOW
    Recurse(0);
#else
    ::kill(::getpid(), SIGKILL);
#endif
  }).detach();
#endif
}

}  // namespace

RELIB_MODULE("overflow", OnLoad, nullptr, relib::Export<Overflow>("overflow"), relib::Export<Ping>("ping"));
