// Threads started while module code runs. The worker defines pthread_create
// (and thrd_create, which glibc implements without it);
// a thread created in module scope (directly, by std::thread or std::async
// inside libstdc++, or by another module thread) runs in that module's scope
// and is recorded. A thread counts as alive until the kernel says its task is
// gone, so pthread_exit and thread-local destructors that run after the start
// routine returns are both covered. Every thread started through it, module
// or host, also gets an agent-owned alternate signal stack (alt_stack.h) for
// as long as its start routine runs.
#ifndef RELIB_AGENT_THREAD_TRACKER_H_
#define RELIB_AGENT_THREAD_TRACKER_H_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::threads {

struct LiveThread {
  pid_t tid = 0;                // 0 if the thread has not started running yet
  std::string name;             // /proc/self/task/TID/comm
  std::string start_routine;    // symbol of the start routine (or of the std::thread callable)
};

// Threads of `id` still alive now. Thread-safe.
std::vector<LiveThread> Live(ModuleId id);

// How many threads of `id` are alive (cheaper than Live: no symbolization).
size_t Count(ModuleId id);

// Waits up to `grace` for every thread of `id` to exit; returns those still
// alive afterwards (empty = all gone).
std::vector<LiveThread> WaitForExit(ModuleId id, std::chrono::milliseconds grace);


// Forgets all records of `id` (after a successful unload).
void Forget(ModuleId id);

}  // namespace relib::agent::threads

#endif  // RELIB_AGENT_THREAD_TRACKER_H_
