// A module whose backtrace crosses a second shared object (relib's
// testing/module/src/backtrace_unloading_host_as_dylib.rs, written fresh):
// the module calls the helper library it links (DT_NEEDED, loaded from the
// helper's own directory), the helper calls back into the module, and the
// module symbolizes its stack there. The frames must name the module's
// probe and the helper's trampoline, each with its file and line (both are
// built with debug info).
#include <string>
#include <string_view>

#include "relib/module.hpp"
#include "tests/testcases/backtrace_helper.h"
#include "tests/testcases/stack_symbolizer.h"

extern "C" __attribute__((noinline, visibility("hidden"))) void relib_bt_across_module_probe(void* out) {
  testcases::Symbolized stack = testcases::SymbolizeStack();
  *static_cast<std::string*>(out) = stack.frames + stack.error;
  asm volatile("" ::: "memory");  // no tail call: this frame must be on the stack
}

namespace {

std::string Trace(std::string_view) {
  std::string frames;
  relib_bt_helper_unique_trampoline(&relib_bt_across_module_probe, &frames);
  for (std::string_view needed : {"relib_bt_across_module_probe ", "backtrace_across.cc:",
                                  "relib_bt_helper_unique_trampoline ", "backtrace_helper.c:"}) {
    if (frames.find(needed) == std::string::npos) {
      throw relib::Error("'" + std::string(needed) + "' missing from the backtrace:\n" + frames);
    }
  }
  return frames;
}

}  // namespace

RELIB_MODULE("backtrace_across", nullptr, nullptr, relib::Export<Trace>("trace"));
