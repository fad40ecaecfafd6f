// Test module for the execution model (tests/concurrency_test.cc): exports
// that sleep, hang, echo and name their build. Built as thread-safe builds
// "a" and "b" (THREAD_SAFE) and as a serial module whose `enter` export
// detects, by itself, two threads inside it at once.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <string_view>
#include <thread>

#include "relib/module.hpp"

#ifndef BUILD
#error "BUILD must be defined"
#endif

namespace {

std::atomic<int> inside{0};
std::atomic<int> overlaps{0};

std::string Sleep(std::string_view input) {
  int ms = std::stoi(std::string(input));
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return "slept " + std::string(input);
}
std::string Echo(std::string_view input) { return std::string(input); }
// Names the build that ran the call, after a short pause so that calls are
// in flight while the module is swapped.
std::string Build(std::string_view) {
  std::this_thread::sleep_for(std::chrono::microseconds(200));
  return "build-" BUILD;
}
std::string Hang(std::string_view) {
  for (;;) ::pause();
}
std::string Enter(std::string_view) {
  if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  inside.fetch_sub(1);
  return "ok";
}
std::string Overlaps(std::string_view) { return std::to_string(overlaps.load()); }

}  // namespace

#ifdef THREAD_SAFE
RELIB_MODULE_THREAD_SAFE("concurrency-" BUILD, nullptr, nullptr, relib::Export<Sleep>("sleep"),
                         relib::Export<Echo>("echo"), relib::Export<Build>("build"), relib::Export<Hang>("hang"),
                         relib::Export<Enter>("enter"), relib::Export<Overlaps>("overlaps"));
#else
RELIB_MODULE("concurrency-" BUILD, nullptr, nullptr, relib::Export<Sleep>("sleep"), relib::Export<Echo>("echo"),
             relib::Export<Build>("build"), relib::Export<Hang>("hang"), relib::Export<Enter>("enter"),
             relib::Export<Overlaps>("overlaps"));
#endif
