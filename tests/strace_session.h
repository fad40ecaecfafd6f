// strace attached to every thread of a running process for the time some
// work takes: how the tests count and place syscalls of relibd and workers.
#ifndef RELIB_TESTS_STRACE_SESSION_H_
#define RELIB_TESTS_STRACE_SESSION_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace relib::testing {

class StraceSession {
 public:
  // Starts `strace -f <options> -o FILE -p pid` and returns once every
  // thread of `pid` has strace as its tracer (a fixed sleep misses syscalls
  // on a loaded machine). nullopt if strace is not installed or cannot
  // attach here (ptrace not permitted): callers skip.
  static std::optional<StraceSession> Attach(pid_t pid, const std::vector<std::string>& options);
  StraceSession(StraceSession&& other) noexcept;
  StraceSession& operator=(StraceSession&&) = delete;
  // Kills strace if Stop was not called.
  ~StraceSession();

  // Detaches strace (SIGINT: with -c it writes its summary) and returns what
  // it wrote; nullopt if it did not end as asked, or on a second call.
  std::optional<std::string> Stop();

 private:
  StraceSession(pid_t tracer, std::string out) : tracer_(tracer), out_(std::move(out)) {}
  pid_t tracer_;
  std::string out_;
};

}  // namespace relib::testing

#endif  // RELIB_TESTS_STRACE_SESSION_H_
