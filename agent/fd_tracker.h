// File descriptors opened in module scope. The worker defines the common fd
// creators (open, openat, creat, socket, socketpair, accept, accept4, pipe,
// pipe2, dup, dup2, dup3, eventfd, epoll_create, epoll_create1,
// timerfd_create, signalfd, memfd_create, inotify_init1) and close; fds made
// inside libc without them (fopen, opendir) are picked up by a scan of
// /proc/self/fd after each module call on the agent thread.
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

// Attributes every open fd that has no owner yet to `id` (call right after
// module code ran on the calling thread).
void ClaimUnowned(ModuleId id);

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
