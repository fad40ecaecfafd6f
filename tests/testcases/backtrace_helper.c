// A helper shared library that a test module links (DT_NEEDED), built into
// its own directory: its one export calls back into the module, so the
// module's backtrace crosses this object (relib's
// testing/host_as_dylib/src/lib.rs, the part that applies to relibd).
#include "tests/testcases/backtrace_helper.h"

__attribute__((noinline)) void relib_bt_helper_unique_trampoline(void (*callback)(void*), void* context) {
  callback(context);
  __asm__ volatile("" ::: "memory");  // no tail call: this frame must be on the stack
}
