// A spawned child process owned through a pidfd, and how it ended.
#ifndef RELIB_COMMON_CHILD_PROCESS_H_
#define RELIB_COMMON_CHILD_PROCESS_H_

#include <sys/types.h>

#include <cstdint>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proc_tree.h"
#include "common/unique_fd.h"

namespace relib::common {

// How a process ended, classified like a supervisor needs it.
struct ExitStatus {
  enum class Kind { kExited, kSignaled };
  Kind kind = Kind::kExited;
  int code = 0;    // exit code for kExited, signal number for kSignaled
  bool core_dumped = false;

  bool Success() const { return kind == Kind::kExited && code == 0; }
  // "exited with code 3", "killed by signal 11 (SIGSEGV), core dumped".
  std::string ToString() const;
};

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is the executable path
  // Parent fds to hand over: {parent_fd, child_fd_number}. Every other fd
  // except 0, 1, 2 is closed in the child.
  std::vector<std::pair<int, int>> fds;
  // Extra environment entries "K=V" added to the parent's environment.
  std::vector<std::string> extra_env;
  // Put the child in a new process group of its own (pgid = its pid), so
  // that it and whatever it starts can be signalled together.
  bool new_process_group = false;
  // Run the child as this user: setgroups(groups), setgid, setuid before
  // exec (REQUIRES: the parent may, i.e. is root). Unset: the parent's ids.
  struct Credentials {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups; empty drops them all
  };
  std::optional<Credentials> credentials;
  // prctl(PR_SET_NO_NEW_PRIVS): exec of a set-uid program gains nothing.
  bool no_new_privs = false;
  // setrlimit(resource, limit) in the child before exec.
  std::vector<std::pair<int, std::pair<uint64_t, uint64_t>>> rlimits;
};

// Returns once no child of this process that was cloned before the call is
// still between its clone and its exec (it waits for a ChildProcess::Spawn
// under way; a shared lock taken and dropped, so callers never wait for
// each other). Until it closes them, a fresh child holds a copy of every
// descriptor its parent had open, and another process may count a file's
// open descriptions: a worker proves its hard link of relibd's module copy
// unused with a file lease, which any such copy refuses. Call it after
// closing such a file and before another process may look.
void AwaitSpawnsUnderWay();

// Owns a child process. Unless already reaped, the destructor sends SIGKILL
// and reaps it. Signals go through the pidfd, so a reaped pid is never
// signalled. Not thread-safe; move-only.
class ChildProcess {
 public:
  // clone (sharing memory until the exec, like vfork) + exec. Errors:
  // clone/pidfd failures; an exec failure shows up as
  // exit code 127 of the child, a failure to apply `rlimits`, `credentials`
  // or `no_new_privs` as exit code 126 (the program never runs).
  static absl::StatusOr<ChildProcess> Spawn(const SpawnOptions& options);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // Readable once the child has exited (usable with poll/epoll/Asio).
  int pidfd() const { return pidfd_.get(); }
  bool reaped() const { return exit_status_.has_value(); }
  const std::optional<ExitStatus>& exit_status() const { return exit_status_; }

  // Sends `signal` unless the child is already reaped.
  absl::Status Signal(int signal);
  // Reaps without blocking; returns the status if the child has exited.
  absl::StatusOr<std::optional<ExitStatus>> TryReap();
  // Blocks until the child exits and reaps it.
  absl::StatusOr<ExitStatus> Wait();
  // How the child ended, once its main thread has exited, without reaping
  // it (/proc/PID/stat exit_code): a process's pidfd turns readable then,
  // while its other threads may still be exiting — on a busy machine for
  // milliseconds — and only after them can it be reaped. Only a death by
  // a signal is reported this way (it ends every thread); nullopt otherwise,
  // while its main thread runs, or if /proc cannot tell.
  std::optional<ExitStatus> EndedWithoutReaping() const;
  // SIGTERM, wait up to `grace_ms`, then SIGKILL; always reaps.
  ExitStatus Terminate(int grace_ms);

  // Direct children of this process that no ChildProcess owns (unreaped):
  // processes it adopted as a child subreaper. A child another thread is
  // spawning is never listed (Spawn and this listing exclude each other), so
  // the caller may kill and reap what is listed. Thread-safe.
  static std::vector<ProcStat> ForeignChildren();

 private:
  ChildProcess(pid_t pid, UniqueFd pidfd) : pid_(pid), pidfd_(std::move(pidfd)) {}
  absl::StatusOr<std::optional<ExitStatus>> Reap(bool block);

  pid_t pid_ = -1;
  UniqueFd pidfd_;
  std::optional<ExitStatus> exit_status_;
};

}  // namespace relib::common

#endif  // RELIB_COMMON_CHILD_PROCESS_H_
