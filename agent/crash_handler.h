// The worker's fatal-signal handler: when module code crashes (SIGSEGV,
// SIGBUS, SIGILL, SIGFPE, SIGABRT), it notes in the flight recorder which
// module the crashing thread was running (and the thread's crash note, see
// crash_note.h), then dies of the same signal. It
// runs on the thread's alternate signal stack (see alt_stack.h), so a stack
// overflow is recorded like any other crash.
#ifndef RELIB_AGENT_CRASH_HANDLER_H_
#define RELIB_AGENT_CRASH_HANDLER_H_

#include "common/flight_recorder.h"

namespace relib::agent {

// Installs the handler for the scope's lifetime; the destructor restores the
// default actions and stops using `record`. At most one live at a time.
// REQUIRES: `record` stays mapped until the destructor has run. Threads
// without an alternate stack still get the handler, except on overflow.
class ScopedCrashHandler {
 public:
  explicit ScopedCrashHandler(common::FlightRecord* record);
  ~ScopedCrashHandler();
  ScopedCrashHandler(const ScopedCrashHandler&) = delete;
  ScopedCrashHandler& operator=(const ScopedCrashHandler&) = delete;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_CRASH_HANDLER_H_
