#include "agent/parent_watch.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "spdlog/spdlog.h"

namespace relib::agent {
namespace {

pid_t expected_parent = 0;

void OnParentDeath(int) {
  // Async-signal-safe: getppid and _exit only.
  if (::getppid() != expected_parent) ::_exit(kParentGoneExitCode);
}

}  // namespace

int ParentDeathSignal() { return SIGRTMAX - 1; }

void WatchParent(int link_fd, std::chrono::milliseconds grace) {
  expected_parent = ::getppid();
  struct sigaction action {};
  action.sa_handler = OnParentDeath;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(ParentDeathSignal(), &action, nullptr);
  if (::prctl(PR_SET_PDEATHSIG, ParentDeathSignal(), 0, 0, 0) != 0) {
    spdlog::warn("phase=startup prctl(PR_SET_PDEATHSIG): {}", std::strerror(errno));
  }
  // relibd died between fork and the prctl: the signal will never come.
  if (::getppid() != expected_parent) ::_exit(kParentGoneExitCode);
  std::thread([link_fd, grace] {
    // The watcher must not take signals meant for module threads.
    sigset_t all;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
    pollfd watch{link_fd, POLLRDHUP, 0};
    while (true) {
      int n = ::poll(&watch, 1, -1);
      if (n < 0 && errno == EINTR) continue;
      // POLLNVAL: the fd was closed, i.e. the worker is on its way out.
      if (n < 0 || (watch.revents & POLLNVAL)) return;
      if (watch.revents & (POLLRDHUP | POLLHUP | POLLERR)) break;
    }
    std::this_thread::sleep_for(grace);
    // Still here: the command thread is stuck in module code.
    ::_exit(kParentGoneExitCode);
  }).detach();
}

}  // namespace relib::agent
