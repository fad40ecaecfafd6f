#include "common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <shared_mutex>

#include "absl/strings/str_cat.h"
#include "common/proc_tree.h"

extern char** environ;

namespace relib::common {
namespace {

// Pids of the unreaped children ChildProcess owns, process-wide: a process
// has one set of children whatever object spawned them. Held across fork so a
// listing never sees a child that is not registered yet.
std::mutex owned_mutex;
std::set<pid_t>& Owned() {
  static auto* owned = new std::set<pid_t>();  // never freed: used until exit
  return *owned;
}

std::shared_mutex& SpawnMutex() {
  static auto* mutex = new std::shared_mutex();  // never freed: used until exit
  return *mutex;
}

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int PidfdSendSignal(int pidfd, int signal) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

// The child runs in the parent's memory (CLONE_VM, like posix_spawn's
// vfork), on its own small stack, while the parent waits: so nothing here
// may allocate, take a lock or change state that libc shares between
// threads. Only raw system calls and async-signal-safe ones until exec.
// No PR_SET_PDEATHSIG: it fires when the forking *thread* exits, and relibd
// forks from short-lived RPC threads. Children learn of their parent's death
// from their own link (a worker exits on EOF).
[[noreturn]] void ExecChild(const SpawnOptions& options, char* const* argv, char* const* envp) {
  if (options.new_process_group) ::setpgid(0, 0);
  // The fds first: until they are closed this child holds every description
  // the parent had open (a file another process waits to see closed, such
  // as a module copy a worker proves unused with a lease). Move handed-over
  // fds above any target number first so dup2 never clobbers a source, then
  // place them.
  int highest = 3;
  for (const auto& [from, to] : options.fds) highest = std::max(highest, to + 1);
  int temps[64];
  size_t count = std::min<size_t>(options.fds.size(), 64);
  for (size_t i = 0; i < count; ++i) {
    temps[i] = ::fcntl(options.fds[i].first, F_DUPFD, highest + 64);
    if (temps[i] < 0) ::_exit(127);
  }
  for (size_t i = 0; i < count; ++i) {
    if (::dup2(temps[i], options.fds[i].second) < 0) ::_exit(127);
  }
  // Close everything else above stderr except the placed fds.
  int next = 3;
  for (size_t i = 0; i < count; ++i) {
    int target = options.fds[i].second;
    // Close [next, target) and keep target; Spawn checked the order.
    if (target >= next) {
      if (target > next) ::syscall(SYS_close_range, next, target - 1, 0);
      next = target + 1;
    }
  }
  if (::syscall(SYS_close_range, next, ~0U, 0) != 0) {
    // No close_range (before Linux 5.9, or refused by a seccomp filter):
    // one by one, up to the descriptor limit.
    rlimit files{};
    const int limit = ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < 1u << 20
                          ? static_cast<int>(files.rlim_cur)
                          : 1 << 20;
    for (int fd = next; fd < limit; ++fd) ::close(fd);
  }
  // Reset the signal dispositions (the child has its own table) before the
  // mask the parent blocked everything with is lifted: no handler of the
  // parent's may run here, in its memory.
  for (int sig = 1; sig < NSIG; ++sig) ::signal(sig, SIG_DFL);
  sigset_t empty;
  sigemptyset(&empty);
  ::sigprocmask(SIG_SETMASK, &empty, nullptr);
  for (const auto& [resource, limit] : options.rlimits) {
    rlimit value{static_cast<rlim_t>(limit.first), static_cast<rlim_t>(limit.second)};
    if (::setrlimit(resource, &value) != 0) ::_exit(126);
  }
  if (options.credentials) {
    // Groups first, then gid, then uid: each step needs the privilege the
    // next one drops. Any failure is fatal: never run with more than asked.
    // Raw system calls: libc's wrappers apply the change to every thread
    // of the process, and in here "the process" would be the parent's.
    const auto& c = *options.credentials;
    if (::syscall(SYS_setgroups, c.groups.size(), c.groups.data()) != 0) ::_exit(126);
    if (::syscall(SYS_setresgid, c.gid, c.gid, c.gid) != 0) ::_exit(126);
    if (::syscall(SYS_setresuid, c.uid, c.uid, c.uid) != 0) ::_exit(126);
  }
  if (options.no_new_privs && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ::_exit(126);
  ::execve(argv[0], argv, envp);
  ::_exit(127);
}

struct ChildArgs {
  const SpawnOptions* options;
  char* const* argv;
  char* const* envp;
};

int ChildMain(void* arg) {
  const auto* args = static_cast<const ChildArgs*>(arg);
  ExecChild(*args->options, args->argv, args->envp);
}

// The child's stack while it runs in the parent's memory until its exec.
constexpr size_t kChildStackBytes = 64 << 10;

}  // namespace

std::string ExitStatus::ToString() const {
  if (kind == Kind::kExited) return absl::StrCat("exited with code ", code);
  const char* name = ::sigabbrev_np(code);
  return absl::StrCat("killed by signal ", code, " (SIG", name ? name : "?", ")",
                      core_dumped ? ", core dumped" : "");
}

void AwaitSpawnsUnderWay() { std::shared_lock<std::shared_mutex> barrier(SpawnMutex()); }

absl::StatusOr<ChildProcess> ChildProcess::Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("spawn: empty argv");
  if (options.fds.size() > 64) return absl::InvalidArgumentError("spawn: too many fds");
  for (size_t i = 1; i < options.fds.size(); ++i) {
    if (options.fds[i].second <= options.fds[i - 1].second) {
      return absl::InvalidArgumentError("spawn: child fd numbers must ascend");
    }
  }
  std::vector<char*> argv;
  for (const auto& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  for (const auto& entry : options.extra_env) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  // clone(CLONE_VM | CLONE_VFORK) instead of fork: no copy of the parent's
  // page tables (relibd maps its state store and more), none to tear down
  // again at exec, and the parent resumes once the child has exec'd.
  void* stack = ::mmap(nullptr, kChildStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                       -1, 0);
  if (stack == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap of the child's stack");
  ChildArgs args{&options, argv.data(), envp.data()};
  pid_t pid;
  int clone_errno = 0;
  {
    // No signal handler of the parent's may run in the child (it would run
    // in the parent's memory): everything is blocked around the clone; the
    // child resets its handlers before it unblocks.
    sigset_t all, old;
    sigfillset(&all);
    // Exclusive across the clone, which returns once the child has closed
    // its inherited fds and exec'd (CLONE_VFORK): see AwaitSpawnsUnderWay.
    std::unique_lock<std::shared_mutex> spawning(SpawnMutex());
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    std::lock_guard<std::mutex> lock(owned_mutex);
    pid = ::clone(ChildMain, static_cast<char*>(stack) + kChildStackBytes, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    clone_errno = errno;
    if (pid > 0) Owned().insert(pid);
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  ::munmap(stack, kChildStackBytes);
  if (pid < 0) return absl::ErrnoToStatus(clone_errno, "clone");
  // Also here, so the group exists before anyone signals it (the child may
  // not have run yet); EACCES once it has exec'd is fine: it did it itself.
  if (options.new_process_group) ::setpgid(pid, pid);
  int pidfd = PidfdOpen(pid);
  if (pidfd < 0) {
    int saved = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    std::lock_guard<std::mutex> lock(owned_mutex);
    Owned().erase(pid);
    return absl::ErrnoToStatus(saved, "pidfd_open");
  }
  ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  return ChildProcess(pid, UniqueFd(pidfd));
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::move(other.pidfd_)),
      exit_status_(std::move(other.exit_status_)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    ChildProcess discard(std::move(*this));
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::move(other.pidfd_);
    exit_status_ = std::move(other.exit_status_);
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  if (pid_ < 0 || reaped()) return;
  Signal(SIGKILL).IgnoreError();
  Wait().IgnoreError();
}

absl::Status ChildProcess::Signal(int signal) {
  if (reaped()) return absl::FailedPreconditionError("process already reaped");
  if (PidfdSendSignal(pidfd_.get(), signal) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("pidfd_send_signal to ", pid_));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ExitStatus>> ChildProcess::Reap(bool block) {
  if (reaped()) return exit_status_;
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  int rc;
  do {
    rc = ::waitid(P_PIDFD, pidfd_.get(), &info, WEXITED | (block ? 0 : WNOHANG));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return absl::ErrnoToStatus(errno, absl::StrCat("waitid ", pid_));
  if (info.si_pid == 0) return std::optional<ExitStatus>();
  ExitStatus status;
  if (info.si_code == CLD_EXITED) {
    status.kind = ExitStatus::Kind::kExited;
    status.code = info.si_status;
  } else {
    status.kind = ExitStatus::Kind::kSignaled;
    status.code = info.si_status;
    status.core_dumped = info.si_code == CLD_DUMPED;
  }
  exit_status_ = status;
  {
    std::lock_guard<std::mutex> lock(owned_mutex);
    Owned().erase(pid_);
  }
  return exit_status_;
}

absl::StatusOr<std::optional<ExitStatus>> ChildProcess::TryReap() { return Reap(false); }

absl::StatusOr<ExitStatus> ChildProcess::Wait() {
  auto status = Reap(true);
  if (!status.ok()) return status.status();
  return **status;
}

std::optional<ExitStatus> ChildProcess::EndedWithoutReaping() const {
  if (reaped()) return exit_status_;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid_));
  UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  char text[1024];
  ssize_t n = fd.valid() ? ::read(fd.get(), text, sizeof(text) - 1) : -1;
  if (n <= 0) return std::nullopt;
  text[n] = '\0';
  // "pid (comm) S ...": comm may hold spaces and parentheses; field 3 is the
  // state, field 52 the exit code in waitpid's encoding.
  const char* paren = std::strrchr(text, ')');
  if (paren == nullptr || paren[1] != ' ') return std::nullopt;
  const char state = paren[2];
  if (state != 'Z' && state != 'X') return std::nullopt;
  const char* cursor = paren + 2;
  for (int field = 3; field < 52; ++field) {
    cursor = std::strchr(cursor, ' ');
    if (cursor == nullptr) return std::nullopt;
    ++cursor;
  }
  char* end = nullptr;
  long code = std::strtol(cursor, &end, 10);
  if (end == cursor) return std::nullopt;
  const int raw = static_cast<int>(code);
  // Only a death by signal ends every thread at once; a main thread that
  // merely exited may leave others running (the process lives on).
  if (!WIFSIGNALED(raw)) return std::nullopt;
  ExitStatus status;
  status.kind = ExitStatus::Kind::kSignaled;
  status.code = WTERMSIG(raw);
  status.core_dumped = WCOREDUMP(raw);
  return status;
}

std::vector<ProcStat> ChildProcess::ForeignChildren() {
  std::lock_guard<std::mutex> lock(owned_mutex);
  std::vector<ProcStat> foreign;
  for (const ProcStat& child : ChildrenOf(::getpid())) {
    if (Owned().count(child.pid) == 0) foreign.push_back(child);
  }
  return foreign;
}

ExitStatus ChildProcess::Terminate(int grace_ms) {
  if (!reaped()) {
    Signal(SIGTERM).IgnoreError();
    pollfd pfd{pidfd_.get(), POLLIN, 0};
    if (::poll(&pfd, 1, grace_ms) <= 0) Signal(SIGKILL).IgnoreError();
  }
  auto status = Wait();
  return status.ok() ? *status : ExitStatus{};
}

}  // namespace relib::common
