// thread_local objects with destructors: without the agent, glibc would keep
// this module mapped forever after dlclose.
#include <string>
#include <string_view>
#include <thread>

#include "relib/module.hpp"

namespace {

thread_local std::string value;

std::string UseHere(std::string_view input) {
  value = std::string(input) + std::string(64, '!');  // beyond the small-string buffer: heap
  return std::to_string(value.size());
}

std::string UseInThread(std::string_view input) {
  std::string seen;
  std::thread([&] {
    value = std::string(input) + std::string(64, '?');
    seen = value;
  }).join();
  return std::to_string(seen.size());
}

}  // namespace

RELIB_MODULE("tls", nullptr, nullptr, relib::Export<UseHere>("use_here"), relib::Export<UseInThread>("use_in_thread"));
