#include "agent/child_tracker.h"

#include <dlfcn.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>

#include "common/proc_tree.h"

namespace relib::agent::children {
namespace {

struct Record {
  pid_t pid = 0;
  uint64_t start_time = 0;
  ModuleId module = kHost;  // kHost: its module was unloaded
  bool zombie = false;
};

// Held across the real fork() so the child never inherits it locked.
std::mutex mutex;
std::vector<Record>* records = nullptr;  // ABSL_GUARDED_BY(mutex); never freed (used until exit)
// When the kernel has no /proc/PID/task/*/children, a scan reads every
// /proc/*/stat; it then runs only if a process was created since the last one,
// a child of ours exited (its children may have come to us), or a second
// passed (orphans adopted later).
pid_t last_pid_seen = -1;  // ABSL_GUARDED_BY(mutex)
std::chrono::steady_clock::time_point last_full_scan;  // ABSL_GUARDED_BY(mutex)
constexpr std::chrono::seconds kFullScanInterval{1};

std::vector<Record>& Records() {
  if (records == nullptr) records = new std::vector<Record>();
  return *records;
}

common::ProcStat Seen(const Record& record) {
  common::ProcStat stat;
  stat.pid = record.pid;
  stat.start_time = record.start_time;
  return stat;
}

// Whether `record` still names a child of ours (nobody reaped it yet).
bool StillOurs(const Record& record, const std::optional<common::ProcStat>& stat) {
  return stat && stat->start_time == record.start_time && stat->ppid == ::getpid();
}

void RecordChild(pid_t pid, ModuleId module) {
  if (pid <= 0 || module == kHost) return;
  auto stat = common::ReadProcStat(pid);
  if (!stat || stat->ppid != ::getpid()) return;  // already reaped by someone
  for (Record& record : Records()) {
    if (record.pid == pid) {  // a reaped child's pid came back
      record = Record{pid, stat->start_time, module, false};
      return;
    }
  }
  Records().push_back(Record{pid, stat->start_time, module, stat->state == 'Z'});
}

// Reaps the exited children of unloaded modules (through a pidfd checked by
// start time: never another process that got the same pid).
void ReapForgotten(Record& record) {
  common::UniqueFd pidfd = common::OpenPidfd(Seen(record));
  if (!pidfd.valid()) return;
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  ::waitid(P_PIDFD, pidfd.get(), &info, WEXITED | WNOHANG);
}

// Whether the process has any child at all (of any of its threads, of any
// kind: __WALL; zombies and adopted orphans count): one system call, where
// the scan of /proc/PID/task/*/children opens a file per thread. ECHILD is
// the kernel's own "none"; WNOWAIT leaves every child as it is.
bool HasAnyChild() {
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  return !(::waitid(P_ALL, 0, &info, WEXITED | WSTOPPED | WCONTINUED | WNOHANG | WNOWAIT | __WALL) != 0 &&
           errno == ECHILD);
}

template <typename T>
T Real(const char* name, const char* version = nullptr) {
  HostScope host;
  void* found = version ? ::dlvsym(RTLD_NEXT, name, version) : nullptr;
  return reinterpret_cast<T>(found ? found : ::dlsym(RTLD_NEXT, name));
}

}  // namespace

bool AdoptOrphans() { return ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0; }

namespace {
RanSince ran;
}  // namespace

void NoteModuleRan(ModuleId id) { ran.Note(id); }

void Sweep() {
  HostScope host;
  const ModuleId id = ran.Take();
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<Record>& all = Records();
  bool changed = false;
  for (size_t i = 0; i < all.size();) {
    Record& record = all[i];
    auto stat = common::ReadProcStat(record.pid);
    if (StillOurs(record, stat) && stat->state == 'Z' && (record.module == kHost || record.module == kUnattributed)) {
      ReapForgotten(record);
      stat = common::ReadProcStat(record.pid);
    }
    if (!StillOurs(record, stat)) {  // reaped (by its module, or above)
      all[i] = all.back();
      all.pop_back();
      changed = true;
      continue;
    }
    if (stat->state == 'Z' && !record.zombie) {
      record.zombie = true;
      changed = true;
    }
    ++i;
  }
  if (id == kHost) return;
  // With children files the scan is cheap: always do it (an orphan adopted
  // as subreaper takes no new pid, so the last pid alone would miss it).
  static const bool cheap = ::access("/proc/thread-self/children", R_OK) == 0;
  pid_t last_pid = cheap ? -1 : common::LastAllocatedPid();
  auto now = std::chrono::steady_clock::now();
  if (!cheap && !changed && last_pid >= 0 && last_pid == last_pid_seen && now - last_full_scan < kFullScanInterval) {
    return;
  }
  last_pid_seen = last_pid;
  last_full_scan = now;
  if (!HasAnyChild()) return;  // nothing for the scan to find
  for (const common::ProcStat& child : common::ChildrenOf(::getpid())) {
    bool known = false;
    for (const Record& record : all) known = known || (record.pid == child.pid && record.start_time == child.start_time);
    if (!known) all.push_back(Record{child.pid, child.start_time, id, child.state == 'Z'});
  }
}

std::vector<Child> Live(ModuleId id) {
  HostScope host;
  std::vector<Child> live;
  std::lock_guard<std::mutex> lock(mutex);
  for (const Record& record : Records()) {
    if (record.module != id) continue;
    auto stat = common::ReadProcStat(record.pid);
    if (!StillOurs(record, stat) || stat->state == 'Z') continue;
    live.push_back(Child{record.pid, stat->ppid, common::CommandLine(record.pid)});
    for (const common::ProcStat& descendant : common::DescendantsOf(record.pid)) {
      if (descendant.state == 'Z') continue;
      live.push_back(Child{descendant.pid, descendant.ppid, common::CommandLine(descendant.pid)});
    }
  }
  return live;
}

void KillAll(ModuleId id) {
  HostScope host;
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<common::ProcStat> roots;
  for (const Record& record : Records()) {
    if (record.module == id && StillOurs(record, common::ReadProcStat(record.pid))) roots.push_back(Seen(record));
  }
  common::KillTrees(roots, std::chrono::milliseconds(1000));
  std::vector<Record>& all = Records();
  for (size_t i = 0; i < all.size();) {
    if (all[i].module == id && !StillOurs(all[i], common::ReadProcStat(all[i].pid))) {
      all[i] = all.back();
      all.pop_back();
    } else {
      ++i;
    }
  }
}

void Forget(ModuleId id) {
  std::lock_guard<std::mutex> lock(mutex);
  for (Record& record : Records()) {
    if (record.module == id) record.module = kHost;
  }
}

}  // namespace relib::agent::children

// Interposed process creators: call the real function, then record the child
// against the calling thread's module.
namespace relib::agent::children {

// After a posix_spawn: hands the pid out and records the child as the
// calling module's.
int Spawned(int rc, pid_t child, pid_t* pid) {
  if (pid != nullptr) *pid = child;
  if (rc == 0) {
    ModuleId module = CurrentModule();
    HostScope host;
    std::lock_guard<std::mutex> lock(mutex);
    RecordChild(child, module);
  }
  return rc;
}

}  // namespace relib::agent::children

extern "C" {

pid_t fork() {
  static auto real = relib::agent::children::Real<pid_t (*)()>("fork");
  relib::agent::ModuleId module = relib::agent::CurrentModule();
  relib::agent::children::mutex.lock();
  pid_t pid = real();
  relib::agent::children::mutex.unlock();  // in the child too: its only thread held it
  if (pid > 0) {
    relib::agent::HostScope host;
    std::lock_guard<std::mutex> lock(relib::agent::children::mutex);
    relib::agent::children::RecordChild(pid, module);
  }
  return pid;
}

int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* actions,
                const posix_spawnattr_t* attributes, char* const argv[], char* const envp[]) {
  static auto real = relib::agent::children::Real<int (*)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                                                          const posix_spawnattr_t*, char* const*, char* const*)>(
      "posix_spawn", "GLIBC_2.15");
  pid_t child = 0;
  int rc = real(&child, path, actions, attributes, argv, envp);
  return relib::agent::children::Spawned(rc, child, pid);
}

int posix_spawnp(pid_t* pid, const char* file, const posix_spawn_file_actions_t* actions,
                 const posix_spawnattr_t* attributes, char* const argv[], char* const envp[]) {
  static auto real = relib::agent::children::Real<int (*)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                                                          const posix_spawnattr_t*, char* const*, char* const*)>(
      "posix_spawnp", "GLIBC_2.15");
  pid_t child = 0;
  int rc = real(&child, file, actions, attributes, argv, envp);
  return relib::agent::children::Spawned(rc, child, pid);
}

}  // extern "C"
