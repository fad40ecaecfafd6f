// Child processes started while module code runs. The worker defines fork,
// posix_spawn and posix_spawnp and records the child against the calling
// thread's module; children made without them (system and popen spawn inside
// libc, vfork, _Fork, clone) and orphans the worker adopts as a child
// subreaper are picked up by a scan of the worker's children after each
// module call on the agent thread, and attributed to the module that just
// ran. A module's children are never reaped while it is loaded: system(),
// pclose() and the module's own waitpid need them.
#ifndef RELIB_AGENT_CHILD_TRACKER_H_
#define RELIB_AGENT_CHILD_TRACKER_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::children {

struct Child {
  pid_t pid = 0;
  // The worker for the module's own children (and orphans it adopted);
  // otherwise the parent of a descendant of one of them.
  pid_t parent = 0;
  std::string command_line;  // from /proc/PID/cmdline
};

// Makes this process a child subreaper: what a module's child leaves running
// when it exits (system("cmd &")'s backgrounded grandchild, a double-forked
// setsid daemon) becomes the worker's child instead of init's, so the scan
// finds it and relibd's clean-up of the worker reaches it. False (errno set)
// if the kernel refused.
bool AdoptOrphans();

// Thread-safe, cheap. Records that code of `id` ran (for Sweep).
void NoteModuleRan(ModuleId id);

// Attributes every child of this process with no owner yet to the one
// module that ran code since the last sweep (to nobody if several did); also
// reaps the exited children of modules already unloaded or of nobody.
void Sweep();

// `id`'s children alive now (zombies are not) and their live descendants.
std::vector<Child> Live(ModuleId id);

// SIGKILLs `id`'s children and all their descendants and reaps them (waits
// up to about a second). REQUIRES: no code of `id` runs any more.
void KillAll(ModuleId id);

// `id` is unloaded: its children are nobody's now. Those still running are
// left alone; once they exit, later scans reap them.
void Forget(ModuleId id);

}  // namespace relib::agent::children

#endif  // RELIB_AGENT_CHILD_TRACKER_H_
