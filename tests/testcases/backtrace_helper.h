// The export of the backtrace helper library (tests/testcases/backtrace_helper.c).
#ifndef RELIB_TESTS_TESTCASES_BACKTRACE_HELPER_H_
#define RELIB_TESTS_TESTCASES_BACKTRACE_HELPER_H_

#ifdef __cplusplus
extern "C" {
#endif

// Calls `callback(context)` from a frame of its own, never inlined or
// tail-called, so that a backtrace taken in `callback` names this function.
__attribute__((visibility("default"))) void relib_bt_helper_unique_trampoline(void (*callback)(void*), void* context);

#ifdef __cplusplus
}
#endif

#endif  // RELIB_TESTS_TESTCASES_BACKTRACE_HELPER_H_
