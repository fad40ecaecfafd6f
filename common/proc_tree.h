// The process tree as /proc shows it (parents, states, start times, children,
// descendants, command lines), and killing whole subtrees through pidfds so
// that only the processes that were seen get signalled and reaped. Shared by
// relibd (what a dead worker left behind) and the worker (what a module
// started).
#ifndef RELIB_COMMON_PROC_TREE_H_
#define RELIB_COMMON_PROC_TREE_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/unique_fd.h"

namespace relib::common {

struct ProcStat {
  pid_t pid = 0;
  pid_t ppid = 0;
  char state = '?';         // R, S, D, Z (zombie), T, ...
  uint64_t start_time = 0;  // clock ticks after boot: tells a recycled pid apart
};

// /proc/PID/stat, or nullopt if there is no such process.
std::optional<ProcStat> ReadProcStat(pid_t pid);

// Direct children of `parent` (of all its threads), zombies included. Reads
// /proc/PID/task/*/children where the kernel has them (CONFIG_PROC_CHILDREN),
// else every /proc/*/stat. A snapshot: processes come and go meanwhile.
std::vector<ProcStat> ChildrenOf(pid_t parent);

// Every descendant of `root` (not `root` itself), parents before their
// children. Same snapshot caveat.
std::vector<ProcStat> DescendantsOf(pid_t root);

// argv joined by spaces (/proc/PID/cmdline); "[comm]" when there is none
// (zombies, kernel threads); "" if the process is gone.
std::string CommandLine(pid_t pid);

// The pid the kernel handed out last in this pid namespace (/proc/loadavg):
// if it did not change, no process was created since. -1 if unreadable.
pid_t LastAllocatedPid();

// A pidfd on the process `seen` describes: opened, then checked to be the
// same process (start time). Signals and waits through it reach that process
// and no other even if the pid is reused. Invalid if it is gone.
UniqueFd OpenPidfd(const ProcStat& seen);

// SIGKILLs every process in `roots` and all their descendants, waits up to
// `timeout` for them to exit, then reaps those that are by then children of
// the caller (roots first; descendants whose parent died were reparented to
// the caller if it is a child subreaper). REQUIRES: nobody else reaps the
// roots meanwhile. Returns how many processes were signalled.
int KillTrees(const std::vector<ProcStat>& roots, std::chrono::milliseconds timeout);

}  // namespace relib::common

#endif  // RELIB_COMMON_PROC_TREE_H_
