#include "agent/signal_tracker.h"

#include <dlfcn.h>
#include <signal.h>
#include <string.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>

#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/symbolize.h"
#include "agent/fork_lock.h"

namespace relib::agent::signals {
namespace {

struct Entry {
  ModuleId owner;
  struct sigaction action;
};

std::mutex stacks_mutex;
[[maybe_unused]] const bool stacks_mutex_held_across_fork = HoldAcrossFork<stacks_mutex>();
// Per signal: the host's disposition (bottom), then the newest disposition of
// each module that changed it, newest last. Empty while no module touched the
// signal. Never destroyed: a library still loaded at exit may call signal().
std::vector<Entry>* const stacks = new std::vector<Entry>[NSIG];
// Signals siginterrupt() asked not to restart system calls (signal() obeys it).
sigset_t interrupting;
bool interrupting_ready = false;

// Blocks every signal for the scope: a handler that calls signal() must not
// run on a thread that holds stacks_mutex.
class SignalsBlocked {
 public:
  SignalsBlocked() {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous_);
  }
  ~SignalsBlocked() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

 private:
  sigset_t previous_;
};

using Sigaction = int (*)(int, const struct sigaction*, struct sigaction*);
Sigaction RealSigaction() {
  static Sigaction real = [] {
    HostScope host;
    return reinterpret_cast<Sigaction>(::dlsym(RTLD_NEXT, "sigaction"));
  }();
  return real;
}

// The signals with a handler (not SIG_DFL or SIG_IGN), bit sig - 1, from
// the SigCgt line of /proc/self/status (the kernel's view of the process's
// shared dispositions, all 64 signals, as rt_sigaction would report them):
// one read instead of a system call per signal. Not /proc/self/stat's
// sigcatch field: the kernel masks it to signals 1-31, so a realtime
// signal's handler would never be looked at. nullopt if it cannot be read.
std::optional<uint64_t> CaughtSignals() {
  int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char text[4096];
  size_t size = 0;
  while (size < sizeof(text) - 1) {
    ssize_t n = ::read(fd, text + size, sizeof(text) - 1 - size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size += static_cast<size_t>(n);
  }
  ::close(fd);
  text[size] = '\0';
  const char* line = std::strstr(text, "\nSigCgt:");
  if (line == nullptr) return std::nullopt;  // includes a status cut short before it
  const char* cursor = line + std::strlen("\nSigCgt:");
  while (*cursor == ' ' || *cursor == '\t') ++cursor;
  char* end = nullptr;
  errno = 0;
  unsigned long long caught = std::strtoull(cursor, &end, 16);
  if (end == cursor || errno != 0 || *end != '\n') return std::nullopt;
  return static_cast<uint64_t>(caught);
}

const void* HandlerAddress(const struct sigaction& action) {
  if (action.sa_flags & SA_SIGINFO) return reinterpret_cast<const void*>(action.sa_sigaction);
  if (action.sa_handler == SIG_DFL || action.sa_handler == SIG_IGN) return nullptr;
  return reinterpret_cast<const void*>(action.sa_handler);
}

std::string Describe(int sig, const struct sigaction& action) {
  const void* handler = HandlerAddress(action);
  const char* name = sigabbrev_np(sig);
  std::string what = handler != nullptr                 ? Symbolize(handler)
                     : action.sa_handler == SIG_IGN ? std::string("SIG_IGN")
                                                        : std::string("SIG_DFL");
  return absl::StrCat(name ? absl::StrCat("SIG", name) : absl::StrCat("signal ", sig), " -> ", what);
}

// Who a new disposition belongs to: the module running, or the module its
// handler lies in (a module's handler installed from a host thread).
ModuleId OwnerOf(const struct sigaction& action) {
  ModuleId owner = CurrentModule();
  if (owner == kHost) owner = ModuleOfAddress(HandlerAddress(action));
  return owner;
}

int Install(int sig, const struct sigaction* action, struct sigaction* old) {
  if (action == nullptr || sig <= 0 || sig >= NSIG) return RealSigaction()(sig, action, old);
  const struct sigaction wanted = *action;  // `old` may alias `action`
  ModuleId owner = OwnerOf(wanted);
  HostScope host;
  SignalsBlocked blocked;
  std::lock_guard<std::mutex> lock(stacks_mutex);
  std::vector<Entry>& stack = stacks[sig];
  struct sigaction previous {};
  int rc = RealSigaction()(sig, &wanted, &previous);
  if (rc != 0) return rc;
  if (old != nullptr) *old = previous;
  if (owner == kHost) {
    stack.clear();  // the host took the signal back: nothing of a module is installed
    return 0;
  }
  if (stack.empty()) stack.push_back({kHost, previous});
  // Only a module's newest disposition can ever be put back: the stack stays
  // at one entry per module however often it re-arms.
  std::erase_if(stack, [owner](const Entry& e) { return e.owner == owner; });
  stack.push_back({owner, wanted});
  return 0;
}

}  // namespace

std::vector<CodeReference> RestoreAll(ModuleId id) {
  HostScope host;
  std::vector<std::pair<int, struct sigaction>> was;
  {
    SignalsBlocked blocked;
    std::lock_guard<std::mutex> lock(stacks_mutex);
    for (int sig = 1; sig < NSIG; ++sig) {
      std::vector<Entry>& stack = stacks[sig];
      if (stack.empty()) continue;
      bool current = stack.back().owner == id;
      struct sigaction top = stack.back().action;
      std::erase_if(stack, [id](const Entry& e) { return e.owner == id; });
      if (!current) continue;
      RealSigaction()(sig, &stack.back().action, nullptr);
      was.emplace_back(sig, top);
      if (stack.size() == 1) stack.clear();  // only the host's own left
    }
  }
  // Described outside the lock: Symbolize takes the dynamic loader's lock.
  std::vector<CodeReference> restored;
  for (const auto& [sig, action] : was) restored.push_back({"signal handler", Describe(sig, action), "restored"});
  return restored;
}

std::vector<CodeReference> Guard(ModuleId id, uintptr_t start, uintptr_t end, bool reset) {
  HostScope host;
  std::vector<std::pair<int, struct sigaction>> hits;
  {
    SignalsBlocked blocked;
    std::lock_guard<std::mutex> lock(stacks_mutex);
    // Only a signal with a handler can point into the module: those are read
    // one by one (every signal if the kernel's list cannot be read).
    const uint64_t caught = CaughtSignals().value_or(~uint64_t{0});
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig <= 64 && (caught & (uint64_t{1} << (sig - 1))) == 0) continue;
      struct sigaction current {};
      if (RealSigaction()(sig, nullptr, &current) != 0) continue;
      auto handler = reinterpret_cast<uintptr_t>(HandlerAddress(current));
      if (handler < start || handler >= end) continue;
      std::vector<Entry>& stack = stacks[sig];
      if (!stack.empty() && stack.back().owner == id) continue;  // tracked: RestoreAll's
      hits.emplace_back(sig, current);
      if (!reset) continue;
      struct sigaction fallback {};
      fallback.sa_handler = SIG_DFL;
      RealSigaction()(sig, stack.empty() ? &fallback : &stack.front().action, nullptr);
      stack.clear();
    }
  }
  std::vector<CodeReference> found;
  for (const auto& [sig, action] : hits) {
    found.push_back({"signal handler", absl::StrCat(Describe(sig, action), " (set behind the agent's back)"),
                     reset ? "reset" : "refused"});
  }
  return found;
}

}  // namespace relib::agent::signals

using relib::agent::signals::Install;

namespace {

// BSD semantics (glibc's signal()): handler stays installed, the signal is
// blocked while it runs, interrupted system calls restart unless
// siginterrupt() said otherwise for that signal.
sighandler_t InstallSimple(int sig, sighandler_t handler, int flags) {
  if (handler == SIG_ERR || sig <= 0 || sig >= NSIG) {
    errno = EINVAL;
    return SIG_ERR;
  }
  using namespace relib::agent::signals;
  if ((flags & SA_RESTART) && interrupting_ready && sigismember(&interrupting, sig)) flags &= ~SA_RESTART;
  struct sigaction action {}, old{};
  action.sa_handler = handler;
  action.sa_flags = flags;
  sigemptyset(&action.sa_mask);
  if (!(flags & SA_NODEFER)) sigaddset(&action.sa_mask, sig);
  if (Install(sig, &action, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

}  // namespace

extern "C" {

int sigaction(int sig, const struct sigaction* action, struct sigaction* old) noexcept {
  return Install(sig, action, old);
}

sighandler_t signal(int sig, sighandler_t handler) noexcept { return InstallSimple(sig, handler, SA_RESTART); }

sighandler_t bsd_signal(int sig, sighandler_t handler) noexcept {
  return InstallSimple(sig, handler, SA_RESTART);
}

sighandler_t sysv_signal(int sig, sighandler_t handler) noexcept {
  return InstallSimple(sig, handler, SA_RESETHAND | SA_NODEFER);
}

int siginterrupt(int sig, int interrupt) noexcept {
  using namespace relib::agent::signals;
  if (sig <= 0 || sig >= NSIG) {
    errno = EINVAL;
    return -1;
  }
  struct sigaction action {};
  if (Install(sig, nullptr, &action) != 0) return -1;
  {
    SignalsBlocked blocked;
    std::lock_guard<std::mutex> lock(stacks_mutex);
    if (!interrupting_ready) {
      sigemptyset(&interrupting);
      interrupting_ready = true;
    }
    if (interrupt) {
      sigaddset(&interrupting, sig);
    } else {
      sigdelset(&interrupting, sig);
    }
  }
  if (interrupt) {
    action.sa_flags &= ~SA_RESTART;
  } else {
    action.sa_flags |= SA_RESTART;
  }
  return Install(sig, &action, nullptr);
}

sighandler_t sigset(int sig, sighandler_t handler) noexcept {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  sigset_t previous_mask;
  if (handler == SIG_HOLD) {
    struct sigaction old {};
    if (Install(sig, nullptr, &old) != 0) return SIG_ERR;
    if (pthread_sigmask(SIG_BLOCK, &set, &previous_mask) != 0) return SIG_ERR;
    return sigismember(&previous_mask, sig) ? SIG_HOLD : old.sa_handler;
  }
  sighandler_t old = InstallSimple(sig, handler, 0);
  if (old == SIG_ERR) return SIG_ERR;
  if (pthread_sigmask(SIG_UNBLOCK, &set, &previous_mask) != 0) return SIG_ERR;
  return sigismember(&previous_mask, sig) ? SIG_HOLD : old;
}

}  // extern "C"
