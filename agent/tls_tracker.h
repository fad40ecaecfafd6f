// Thread-local destructors of modules. glibc pins a library in memory for as
// long as a thread_local destructor it registered is pending
// (__cxa_thread_atexit_impl). The worker defines that function: registrations
// whose dso_handle lies in a module are kept here instead (other
// registrations go to glibc unchanged), so the module stays unloadable.
//
// What runs where:
//  - a thread that exits runs its own pending module destructors, in reverse
//    order of registration, as glibc would; the agent's call executors run
//    theirs just before they end (RunOnThisThread), and those count as run
//    in the module's next unload report;
//  - at unload, the unloading thread runs its own pending destructors of that
//    module (before dlclose, in module scope);
//  - pending destructors of that module on any other live thread cannot be
//    run safely from here (they would touch that thread's objects while it
//    runs); they are discarded and counted. The unload checks refuse while a
//    module thread is alive, so this concerns only host threads that called
//    into the module.
#ifndef RELIB_AGENT_TLS_TRACKER_H_
#define RELIB_AGENT_TLS_TRACKER_H_

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::tls {

struct Outcome {
  int64_t run = 0;        // destructors run on the unloading thread or by ended call executors
  int64_t discarded = 0;  // pending on other threads, dropped
  std::vector<pid_t> discarded_on;  // those threads
};

// REQUIRES: called on the unloading thread before dlclose of `id`.
Outcome RunOrDiscard(ModuleId id);

// Runs the calling thread's pending module destructors now, newest first,
// each in its module's scope, and counts them for the modules' reports.
// For host threads that ran module code and are about to end.
void RunOnThisThread();

// Drops every pending destructor of `id` without running it (for
// registrations made while the module's code was being unmapped). Returns
// how many.
int64_t Discard(ModuleId id);

}  // namespace relib::agent::tls

#endif  // RELIB_AGENT_TLS_TRACKER_H_
