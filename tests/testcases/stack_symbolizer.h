// Symbolizes the calling thread's stack with GCC's libbacktrace (the engine
// behind std::stacktrace), the way a module that logs backtraces does. The
// first use reads the ELF and DWARF data of every loaded object — the module's
// own file, other modules' files, libc — through file-backed mmaps made from
// module code, and caches them in a state that lives as long as the module.
#ifndef RELIB_TESTS_TESTCASES_STACK_SYMBOLIZER_H_
#define RELIB_TESTS_TESTCASES_STACK_SYMBOLIZER_H_

#include <backtrace.h>

#include <string>

namespace testcases {

struct Symbolized {
  std::string frames;  // "function file:line" per frame, innermost first
  std::string error;   // libbacktrace's last complaint, if any
};

inline void RecordError(void* data, const char* message, int errnum) {
  auto* out = static_cast<Symbolized*>(data);
  out->error = std::string(message) + " (" + std::to_string(errnum) + ")";
}

inline int RecordFrame(void* data, uintptr_t, const char* file, int line, const char* function) {
  auto* out = static_cast<Symbolized*>(data);
  out->frames += function ? function : "?";
  out->frames += " ";
  out->frames += file ? file : "?";
  out->frames += ":" + std::to_string(line) + "\n";
  return 0;
}

// Created once per loaded copy of the module and never freed, like the
// cached state of std::stacktrace.
inline backtrace_state* SymbolizerState() {
  static backtrace_state* state = backtrace_create_state(nullptr, /*threaded=*/1, nullptr, nullptr);
  return state;
}

// The stack of the caller, symbolized.
__attribute__((noinline)) inline Symbolized SymbolizeStack() {
  Symbolized out;
  if (SymbolizerState() == nullptr) {
    out.error = "backtrace_create_state failed";
    return out;
  }
  backtrace_full(SymbolizerState(), /*skip=*/0, RecordFrame, RecordError, &out);
  return out;
}

}  // namespace testcases

#endif  // RELIB_TESTS_TESTCASES_STACK_SYMBOLIZER_H_
