#include "daemon/orphans.h"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"

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

namespace {

constexpr char kOwnerFile[] = "relibd.owner";

struct Owner {
  pid_t pid = 0;
  uint64_t start_time = 0;
  bool created = false;
};

std::optional<Owner> ReadOwner(const std::string& run_dir) {
  std::ifstream in(run_dir + "/" + kOwnerFile);
  Owner owner;
  std::string how;
  if (!(in >> owner.pid >> owner.start_time >> how)) return std::nullopt;
  owner.created = how == "created";
  return owner;
}

bool OwnerRuns(const Owner& owner) {
  if (owner.pid == ::getpid()) return true;
  std::optional<common::ProcStat> stat = common::ReadProcStat(owner.pid);
  return stat && stat->start_time == owner.start_time && stat->state != 'Z';
}

// Processes whose command line has `--scratch-dir <run_dir>/...`: workers
// of whatever relibd used `run_dir`. SIGKILLs each with its process group.
int KillWorkersIn(const std::string& run_dir) {
  std::error_code error;
  int killed = 0;
  const std::string prefix = run_dir + "/";
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    pid_t pid = std::atoi(entry.path().filename().c_str());
    if (pid <= 1 || pid == ::getpid()) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    std::string cmdline = bytes.str();
    size_t at = cmdline.find(std::string("--scratch-dir") + '\0' + prefix);
    if (at == std::string::npos) continue;
    spdlog::warn("worker pid={} phase=clean-up killing a worker of a relibd that is gone ({})", pid,
                 common::CommandLine(pid));
    ::kill(-pid, SIGKILL);  // what it started in its process group
    ::kill(pid, SIGKILL);
    ++killed;
  }
  return killed;
}

}  // namespace

absl::Status ClaimRunDir(const std::string& run_dir, bool created) {
  std::optional<common::ProcStat> self = common::ReadProcStat(::getpid());
  std::string path = run_dir + "/" + kOwnerFile;
  std::ofstream out(path, std::ios::trunc);
  out << ::getpid() << " " << (self ? self->start_time : 0) << " " << (created ? "created" : "given") << "\n";
  if (!out.flush()) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status CleanUpRunDir(const std::string& run_dir) {
  if (std::optional<Owner> owner = ReadOwner(run_dir); owner && OwnerRuns(*owner)) {
    return absl::FailedPreconditionError(
        absl::StrCat("run dir ", run_dir, " belongs to relibd pid ", owner->pid, ", which is still running"));
  }
  KillWorkersIn(run_dir);
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(run_dir, error)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("worker-", 0) == 0 || name == "good" || name == kOwnerFile) {
      std::filesystem::remove_all(entry.path(), error);
    }
  }
  return absl::OkStatus();
}

int RemoveStaleRunDirs(const std::string& tmp_dir) {
  int removed = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(tmp_dir, error)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("relibd-", 0) != 0 || !entry.is_directory(error)) continue;
    std::optional<Owner> owner = ReadOwner(entry.path().string());
    if (!owner || !owner->created || OwnerRuns(*owner)) continue;
    KillWorkersIn(entry.path().string());
    std::filesystem::remove_all(entry.path(), error);
    spdlog::info("phase=clean-up removed run dir {} of relibd pid {}, which is gone", entry.path().string(),
                 owner->pid);
    ++removed;
  }
  return removed;
}

}  // namespace relib::daemon
