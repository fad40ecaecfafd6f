// One module source built five times with growing features, swapped over one
// path between reloads (relib's testing/module/src/code_change.rs, written
// fresh). CODE_CHANGE_VERSION selects the build:
//   1: `main` answers "v1"
//   2: + before_unload logs "[module] before_unload vN"
//   3: + `main` leaks 200 MiB (touched)
//   4: + `main` symbolizes its stack and checks its own frame and file:line
//   5: + a second, separate backtrace with the same check
#include <cstring>
#include <string>
#include <string_view>

#include "relib/module.hpp"

#ifndef CODE_CHANGE_VERSION
#error "CODE_CHANGE_VERSION must be defined"
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

#if CODE_CHANGE_VERSION >= 4
#include "tests/testcases/stack_symbolizer.h"

extern "C" __attribute__((noinline, visibility("hidden"))) std::string relib_code_change_first_probe() {
  testcases::Symbolized stack = testcases::SymbolizeStack();
  asm volatile("" ::: "memory");  // no tail call: this frame must be on the stack
  return stack.frames + stack.error;
}
#endif
#if CODE_CHANGE_VERSION >= 5
extern "C" __attribute__((noinline, visibility("hidden"))) std::string relib_code_change_second_probe() {
  testcases::Symbolized stack = testcases::SymbolizeStack();
  asm volatile("" ::: "memory");
  return stack.frames + stack.error;
}
#endif

namespace {

[[maybe_unused]] void CheckFrames(const std::string& frames, const char* probe) {
  bool own_frame = frames.find(std::string(probe) + " ") != std::string::npos;
  if (!own_frame || frames.find("code_change.cc:") == std::string::npos) {
    throw relib::Error(std::string("frame of ") + probe + " or code_change.cc:<line> missing from the backtrace:\n" +
                       frames);
  }
}

std::string Main(std::string_view) {
  std::string answer = "v" STR(CODE_CHANGE_VERSION);
#if CODE_CHANGE_VERSION >= 3
  constexpr size_t kLeak = 200u << 20;
  char* leak = new char[kLeak];
  std::memset(leak, 1, kLeak);  // touched, so it counts in RSS until freed
  answer += " leaked " + std::to_string(kLeak);
#endif
#if CODE_CHANGE_VERSION >= 4
  CheckFrames(relib_code_change_first_probe(), "relib_code_change_first_probe");
  answer += " backtrace";
#endif
#if CODE_CHANGE_VERSION >= 5
  CheckFrames(relib_code_change_second_probe(), "relib_code_change_second_probe");
  answer += " backtrace";
#endif
  return answer;
}

#if CODE_CHANGE_VERSION >= 2
void BeforeUnload() { relib::ThisHost().Info("[module] before_unload v" STR(CODE_CHANGE_VERSION)); }
#define CODE_CHANGE_BEFORE_UNLOAD BeforeUnload
#else
#define CODE_CHANGE_BEFORE_UNLOAD nullptr
#endif

}  // namespace

RELIB_MODULE("code-change", nullptr, CODE_CHANGE_BEFORE_UNLOAD, relib::Export<Main>("main"));
