// What a worker leaves behind when it exits. Every worker runs in a process
// group of its own (its pid), which everything it starts inherits; relibd
// kills that group when the worker has exited. Processes that left the group
// (setsid, setpgid) are caught another way: the worker is a child subreaper
// while it lives, and relibd is one too, so when the worker dies they become
// relibd's children, and relibd kills and reaps every child that is not one
// of its workers.
#ifndef RELIB_DAEMON_ORPHANS_H_
#define RELIB_DAEMON_ORPHANS_H_

#include <sys/types.h>

#include <chrono>

#include "absl/status/status.h"

namespace relib::daemon {

// Makes relibd a child subreaper (PR_SET_CHILD_SUBREAPER). Errors: the
// prctl errno.
absl::Status BecomeSubreaper();

// SIGKILLs the process group `worker_pid` (what the worker started and that
// stayed in its group). REQUIRES: the worker has exited but is not reaped
// yet: its pid, and so the group id, cannot have been reused.
void KillWorkerGroup(pid_t worker_pid);

// Kills (with their descendants) and reaps every child of relibd that no
// ChildProcess owns, i.e. every process it adopted; repeats while doing so
// makes more of them reparent to relibd. Never touches a worker. Blocks for
// at most about `timeout`. Returns how many processes it killed.
int KillAdoptedProcesses(std::chrono::milliseconds timeout);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_ORPHANS_H_
