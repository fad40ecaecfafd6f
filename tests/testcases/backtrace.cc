// A module that takes and symbolizes a backtrace in an export (relib's
// testing/module/src/backtrace_unloading.rs, written fresh): the frames must
// name its uniquely named, non-inlined helper and, since it is built with
// debug info, this file and line.
#include <string>
#include <string_view>

#include "relib/module.hpp"
#include "tests/testcases/stack_symbolizer.h"

extern "C" __attribute__((noinline, visibility("hidden"))) std::string relib_backtrace_testcase_probe() {
  testcases::Symbolized stack = testcases::SymbolizeStack();
  asm volatile("" ::: "memory");  // no tail call: this frame must be on the stack
  return stack.frames + stack.error;
}

namespace {

std::string Trace(std::string_view) {
  std::string frames = relib_backtrace_testcase_probe();
  if (frames.find("relib_backtrace_testcase_probe ") == std::string::npos) {
    throw relib::Error("own frame missing from the backtrace:\n" + frames);
  }
  if (frames.find("backtrace.cc:") == std::string::npos) {
    throw relib::Error("own file:line missing from the backtrace:\n" + frames);
  }
  return frames;
}

}  // namespace

RELIB_MODULE("backtrace", nullptr, nullptr, relib::Export<Trace>("trace"));
