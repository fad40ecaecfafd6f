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
#include <string>

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

// --- What a relibd that died (SIGKILL, crash) left behind ---------------
// A relibd claims its run dir with a file naming its pid and start time.
// The next relibd on that run dir (or, for default run dirs, in the same
// temp dir) finds the owner gone, kills the workers whose scratch dir is in
// the run dir (and their process groups), and removes what the predecessor
// made there. Workers normally end by themselves when relibd dies (see
// agent/parent_watch.h); this catches the rest (stopped, stuck in the
// kernel, or from a relibd without that).

// Writes `<run_dir>/relibd.owner`. `created`: relibd made `run_dir` itself
// (its default temp dir), so a successor may remove the whole directory.
absl::Status ClaimRunDir(const std::string& run_dir, bool created);
// Kills a dead predecessor's workers in `run_dir` and removes its worker
// scratch dirs and good copies (nothing else: the dir may hold the user's
// files). FAILED_PRECONDITION if a relibd that still runs owns `run_dir`.
absl::Status CleanUpRunDir(const std::string& run_dir);
// Default run dirs (`<tmp_dir>/relibd-*` made by relibd) whose relibd is
// gone: their workers killed, the dirs removed. Returns how many.
int RemoveStaleRunDirs(const std::string& tmp_dir);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_ORPHANS_H_
