#include "agent/signal_tracker.h"

#include <dlfcn.h>
#include <signal.h>
#include <string.h>

#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/symbolize.h"

namespace relib::agent::signals {
namespace {

struct Entry {
  ModuleId owner;
  struct sigaction action;
};

std::mutex stacks_mutex;
// Per signal: the host's disposition (bottom), then one entry per module
// change, newest last. Empty while no module ever touched the signal.
std::vector<Entry> stacks[NSIG];

using Sigaction = int (*)(int, const struct sigaction*, struct sigaction*);
Sigaction RealSigaction() {
  static Sigaction real = [] {
    HostScope host;
    return reinterpret_cast<Sigaction>(::dlsym(RTLD_NEXT, "sigaction"));
  }();
  return real;
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
  ModuleId owner = OwnerOf(*action);
  HostScope host;
  std::lock_guard<std::mutex> lock(stacks_mutex);
  std::vector<Entry>& stack = stacks[sig];
  struct sigaction previous {};
  int rc = RealSigaction()(sig, action, &previous);
  if (rc != 0) return rc;
  if (old != nullptr) *old = previous;
  if (owner == kHost) {
    stack.clear();  // the host took the signal back: nothing of a module is installed
    return 0;
  }
  if (stack.empty()) stack.push_back({kHost, previous});
  stack.push_back({owner, *action});
  return 0;
}

}  // namespace

std::vector<CodeReference> RestoreAll(ModuleId id) {
  HostScope host;
  std::vector<std::pair<int, struct sigaction>> was;
  {
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
    std::lock_guard<std::mutex> lock(stacks_mutex);
    for (int sig = 1; sig < NSIG; ++sig) {
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
// blocked while it runs, interrupted system calls restart.
sighandler_t InstallSimple(int sig, sighandler_t handler, int flags) {
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
