// File descriptors opened in module scope. The worker defines the common fd
// creators (open, openat, creat, socket, socketpair, accept, accept4, pipe,
// pipe2, dup, dup2, dup3, eventfd, epoll_create, epoll_create1,
// timerfd_create, signalfd, memfd_create, inotify_init1), the libc functions
// that open fds through libc-internal calls (fopen, fopen64, freopen,
// tmpfile, opendir, mkstemp, mkostemp, popen) and close, and records the
// owner (the calling thread's module; the host's own fds are marked as such).
// Nothing is scanned per call. What still escapes (an fd some other libc
// routine opened internally and kept) is found by Sweep, at usage and unload
// time, and attributed only when unambiguous: if exactly one module ran code
// since the previous sweep; otherwise it stays unattributed (in no module's
// count or report).
#ifndef RELIB_AGENT_FD_TRACKER_H_
#define RELIB_AGENT_FD_TRACKER_H_

#include <string>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::fds {

struct OpenFd {
  int fd = -1;
  std::string kind;         // file, directory, pipe, socket, eventfd, epoll, timerfd, signalfd, memfd, inotify, other
  std::string description;  // path, socket address ("tcp 127.0.0.1:8080 listening"), or link text
};

// Records the fds open now (stdio, the link, ...) as the host's own.
void SnapshotHostFds();

// The agent's own fds created later (the fd store's duplicates): never
// attributed to a module. ForgetHost before closing them.
void AdoptAsHost(int fd);
void ForgetHost(int fd);

// Thread-safe, cheap (one atomic OR). Records that code of `id` ran (after a
// call or hook), for Sweep's attribution.
void NoteModuleRan(ModuleId id);

// Thread-safe. Scans /proc/self/fd for open fds nobody owns: each goes to
// the one module that ran code since the last sweep, if exactly one did;
// otherwise it is left unattributed. Returns how many were left so.
int Sweep();

// Open fds of `id` (stale records of fds closed behind our back are dropped).
std::vector<OpenFd> Open(ModuleId id);

// How many fds of `id` are open (no description: cheap enough per command).
int Count(ModuleId id);

// Closes every fd of `id`; returns how many.
int CloseAll(ModuleId id);

// Drops ownership records of `id` without closing.
void Forget(ModuleId id);

}  // namespace relib::agent::fds

#endif  // RELIB_AGENT_FD_TRACKER_H_
