#include "daemon/orphans.h"

#include <signal.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstring>

#include "common/child_process.h"
#include "common/proc_tree.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {

absl::Status BecomeSubreaper() {
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
    return absl::ErrnoToStatus(errno, "prctl(PR_SET_CHILD_SUBREAPER)");
  }
  return absl::OkStatus();
}

void KillWorkerGroup(pid_t worker_pid) {
  if (worker_pid <= 1) return;
  // The zombie worker is a member itself, so this succeeds even when nothing
  // else was left.
  if (::kill(-worker_pid, SIGKILL) != 0) {
    spdlog::debug("worker pid={} phase=exit kill of its process group: {}", worker_pid, std::strerror(errno));
  }
}

int KillAdoptedProcesses(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int killed = 0;
  // Killing one may hand us its children (they reparent to relibd): again.
  for (int round = 0; round < 16; ++round) {
    std::vector<common::ProcStat> adopted = common::ChildProcess::ForeignChildren();
    if (adopted.empty()) break;
    for (const common::ProcStat& process : adopted) {
      if (process.state == 'Z') continue;  // already dead (killed with its group): only reaped
      spdlog::warn("phase=clean-up killing pid={} ({}) left behind by a worker", process.pid,
                   common::CommandLine(process.pid));
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    killed += common::KillTrees(adopted, left);
  }
  return killed;
}

}  // namespace relib::daemon
