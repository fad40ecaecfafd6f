// POSIX timers created by module code. The worker defines timer_create and
// timer_delete. A SIGEV_THREAD timer runs its notification function on a
// thread glibc creates, which no pthread_create interposer sees; the agent
// substitutes its own notification function, which enters module scope, runs
// the module's function and counts the notifications in flight — and after
// the timer was deleted at unload, returns without calling into the module.
#ifndef RELIB_AGENT_TIMER_TRACKER_H_
#define RELIB_AGENT_TIMER_TRACKER_H_

#include <chrono>
#include <vector>

#include "agent/code_reference.h"
#include "agent/module_context.h"

namespace relib::agent::timers {

struct Outcome {
  std::vector<CodeReference> deleted;  // one "deleted" entry per timer
  // Notifications of `id` still running module code after the grace period.
  int in_flight = 0;
};

// Deletes every timer `id` left armed or disarmed, then waits up to `grace`
// for notification threads already inside module code. Thread-safe.
Outcome DeleteAll(ModuleId id, std::chrono::milliseconds grace);

}  // namespace relib::agent::timers

#endif  // RELIB_AGENT_TIMER_TRACKER_H_
