// Ends the worker when its relibd is gone, even while module code hangs in a
// call on the command thread: relibd's death (parent-death signal, checked
// against the parent pid seen at start) and the link's hang-up (relibd closed
// it or died) both end the process. An orderly close of the link still lets
// the worker finish on its own first.
#ifndef RELIB_AGENT_PARENT_WATCH_H_
#define RELIB_AGENT_PARENT_WATCH_H_

#include <chrono>

namespace relib::agent {

// The parent-death signal. Not SIGKILL: Linux sends it when the *thread*
// that forked the worker exits, and relibd forks from gRPC threads that come
// and go; the handler ends the worker only if its parent process changed.
// A real-time signal no module is likely to use.
int ParentDeathSignal();

// Exit code of a worker that ended because relibd was gone.
inline constexpr int kParentGoneExitCode = 75;

// Call once, early in main, before any module is loaded. Arms the
// parent-death signal and starts a detached thread that watches `link_fd`
// for a hang-up; after a hang-up the worker has `grace` to exit by itself
// (its command loop sees the end of the link when it is idle), then it is
// ended with _exit(kParentGoneExitCode). If relibd is already gone (its link
// hung up, or the parent changed) the worker ends at once.
void WatchParent(int link_fd, std::chrono::milliseconds grace);

}  // namespace relib::agent

#endif  // RELIB_AGENT_PARENT_WATCH_H_
