#include "daemon/supervisor.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <filesystem>
#include <map>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/child_process.h"
#include "common/log_text.h"
#include "daemon/module_file.h"
#include "daemon/request_validation.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace {

constexpr char kDefaultGroup[] = "default";
constexpr char kSelfTestExport[] = "self_test";
// A module log line longer than this is cut (the worker cuts at 64 KiB already).
constexpr size_t kMaxLogTextBytes = 80u << 10;
// Added to the sum of a command's phase deadlines: the watchdog enforces the
// phases precisely; this only catches a worker that stops answering between them.
constexpr std::chrono::milliseconds kCommandSlack{2000};
// How long Status waits for a worker's fresh usage before it shows the last one.
constexpr std::chrono::milliseconds kUsagePollTimeout{200};

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status ReplyStatus(const v1::link::Reply& reply) {
  return absl::Status(static_cast<absl::StatusCode>(reply.code()), reply.message());
}

void ApplyLoadResult(const v1::link::LoadResult& result, v1::ModuleInfo& info) {
  info.set_descriptor_name(result.descriptor_name());
  info.mutable_exports()->CopyFrom(result.exports());
  info.mutable_warnings()->CopyFrom(result.warnings());
  info.mutable_stats()->Clear();
  info.mutable_stats()->set_loaded_at_unix_ms(NowUnixMs());
  info.mutable_stats()->set_load_micros(result.load_micros());
}

void RemoveFile(const std::string& path) {
  if (path.empty()) return;
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
}

}  // namespace

Supervisor::Supervisor(boost::asio::io_context& io, SupervisorOptions options, EventBus& events)
    : io_(io),
      options_(std::move(options)),
      events_(events),
      // A spare would be one more process of the worker user: under an
      // nproc limit it could make a module's fork fail where it would not.
      spare_enabled_(options_.spare_workers > 0 && !options_.worker.limits.LimitsProcesses()),
      recovery_(options_.restart),
      good_copies_(options_.good_dir,
                   options_.worker.run_as ? std::optional<gid_t>(options_.worker.run_as->gid) : std::nullopt) {
  if (options_.spare_workers > 0 && !spare_enabled_) {
    spdlog::info("phase=startup no spare worker: an nproc worker limit is set and a spare would count against it");
  }
  std::error_code ignored;
  std::filesystem::create_directories(options_.good_dir, ignored);
  // Workers running as another user reach their module copies here by name.
  if (options_.worker.run_as) ::chmod(options_.good_dir.c_str(), 0711);
  restarter_ = std::thread([this] { RestartLoop(); });
}

Supervisor::~Supervisor() { Shutdown(); }

void Supervisor::Publish(v1::EventKind kind, const std::string& module, uint64_t version, int32_t pid,
                         const std::string& message, const v1::UnloadReport* report, const std::string& cause) {
  v1::Event event;
  event.set_kind(kind);
  event.set_module(module);
  event.set_version(version);
  event.set_worker_pid(pid);
  event.set_message(message);
  if (report != nullptr) *event.mutable_report() = *report;
  event.set_cause(cause);
  events_.Publish(std::move(event));
}

v1::link::ToWorker Supervisor::LoadCommand(const std::string& name, const std::string& file, const std::string& path,
                                           uint64_t version, const v1::ModuleOptions& options, bool without_fds,
                                           std::vector<common::UniqueFd>& fds) const {
  v1::link::ToWorker command;
  auto* load = command.mutable_load();
  load->set_name(name);
  load->set_path(file);
  load->set_display_path(path);
  load->set_version(version);
  *load->mutable_options() = options;
  for (auto& [key, value] : options_.state_store->Get(name)) {
    auto* entry = load->add_state();
    entry->set_key(key);
    entry->set_value(std::move(value));
  }
  if (!without_fds) {
    for (auto& [key, fd] : fd_store_.Duplicates(name)) {
      load->add_fd_keys(key);
      fds.push_back(std::move(fd));
    }
  }
  return command;
}

std::shared_ptr<Supervisor::Record> Supervisor::Find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = modules_.find(name);
  return it == modules_.end() ? nullptr : it->second;
}

std::chrono::milliseconds Supervisor::PhaseDeadline(const v1::ModuleOptions& options, common::Phase phase) const {
  auto pick = [](uint32_t ms, std::chrono::milliseconds fallback) {
    return ms > 0 ? std::chrono::milliseconds(ms) : fallback;
  };
  const Deadlines& d = options_.deadlines;
  switch (phase) {
    case common::Phase::kLoad: return pick(options.load_deadline_ms(), d.load);
    case common::Phase::kOnLoad: return pick(options.on_load_deadline_ms(), d.on_load);
    case common::Phase::kCall: return pick(options.call_deadline_ms(), d.call);
    case common::Phase::kBeforeUnload: return pick(options.before_unload_deadline_ms(), d.before_unload);
    case common::Phase::kUnloadChecks:
      return pick(options.unload_deadline_ms(), d.unload) +
             std::chrono::milliseconds(options.thread_grace_ms() > 0 ? options.thread_grace_ms() : 1000);
    case common::Phase::kIdle: break;
  }
  return std::chrono::milliseconds(0);
}

std::chrono::milliseconds Supervisor::PhaseDeadlineOf(const std::string& module, common::Phase phase) const {
  v1::ModuleOptions options;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = modules_.find(module);
    if (it != modules_.end()) options = it->second->info.options();
  }
  return PhaseDeadline(options, phase);
}

std::chrono::milliseconds Supervisor::CommandDeadline(const v1::ModuleOptions& options,
                                                      std::initializer_list<common::Phase> phases) const {
  std::chrono::milliseconds total = kCommandSlack;
  for (common::Phase phase : phases) total += PhaseDeadline(options, phase);
  return total;
}

WorkerHandle::Callbacks Supervisor::WorkerCallbacks(std::shared_ptr<Assignment> assignment) {
  WorkerHandle::Callbacks callbacks;
  callbacks.on_exit = [this, assignment](pid_t pid, const WorkerExit& exit) {
    std::string group;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      group = assignment->group;
    }
    if (group.empty()) {
      OnSpareExit(pid, exit);
    } else {
      OnWorkerExit(group, pid, exit);
    }
  };
  callbacks.on_ready = [this, assignment](pid_t) {
    std::lock_guard<std::mutex> lock(mutex_);
    // A spare's hello ("") proves workers start, not that a group's own can;
    // a spare already handed to a group counts for that group.
    assignment->ready = true;
    recovery_.WorkerReady(assignment->group);
    spare_failures_ = 0;
    if (!ever_ready_) {
      ever_ready_ = true;
      WantSpareLocked(Clock::now());
    }
  };
  callbacks.on_log = [this](pid_t pid, const v1::link::Log& log) { OnWorkerLog(pid, log); };
  callbacks.on_usage = [this](pid_t pid, const v1::link::Usage& usage) { OnWorkerUsage(pid, usage); };
  // The module learns the outcome (its save_state's answer); relibd's log
  // keeps a refusal for the operator.
  callbacks.on_save_state = [this](pid_t pid, const v1::link::SaveState& save) {
    absl::Status saved = options_.state_store->Put(save.module(), save.key(), save.value());
    if (!saved.ok()) {
      spdlog::warn("module={} worker pid={} phase=save-state {}", save.module(), pid, std::string(saved.message()));
    }
    return saved;
  };
  callbacks.on_store_fd = [this](pid_t pid, const v1::link::StoreFd& store, common::UniqueFd fd) {
    spdlog::debug("module={} worker pid={} phase=store-fd key={}", store.module(), pid,
                  common::EscapeForLog(store.key(), 64));
    const int raw = fd.get();
    absl::Status stored = fd_store_.Put(store.module(), store.key(), std::move(fd));
    if (stored.ok() && options_.on_fd_stored) options_.on_fd_stored(store.module(), store.key(), raw);
    if (!stored.ok()) {
      spdlog::warn("module={} worker pid={} phase=store-fd {}", store.module(), pid, std::string(stored.message()));
    }
    return stored;
  };
  callbacks.phase_deadline = [this](const std::string& module, common::Phase phase) {
    return PhaseDeadlineOf(module, phase);
  };
  return callbacks;
}

std::shared_ptr<WorkerHandle> Supervisor::TakeSpareLocked(const std::string& group) {
  if (!spare_) return nullptr;
  // Its rlimits were set at its exec: it fits only a group that would get the same.
  // A CPU-time limit counts from the exec, and a spare has already spent
  // some: such a group gets a fresh worker.
  const WorkerLimits wanted = options_.worker.limits.For(group);
  if (!spare_->alive() || spare_->limits() != wanted || wanted.cpu_seconds) return nullptr;
  std::shared_ptr<WorkerHandle> worker = std::move(spare_);
  spare_.reset();
  spare_assignment_->group = group;
  // A spare that said hello gives the group a started worker; one that has
  // not yet counts for the group when it does (or fails for it when it dies).
  if (spare_assignment_->ready) recovery_.WorkerReady(group);
  spare_assignment_.reset();
  worker->AssignGroup(group);
  // The next spare starts once the restarter is free (after a restore it runs).
  WantSpareLocked(Clock::now());
  return worker;
}

void Supervisor::WantSpareLocked(Clock::time_point when) {
  if (!spare_enabled_ || !ever_ready_ || spare_ || shut_down_ || stopping_) return;
  if (!spare_due_ || when < *spare_due_) spare_due_ = when;
  restart_wakeup_.notify_all();
}

void Supervisor::StartSpare() {
  auto assignment = std::make_shared<Assignment>();
  // Spawned without the lock: a fork must not hold up calls.
  auto worker = WorkerHandle::Start(io_, options_.worker, "spare", options_.worker.limits.Common(),
                                    WorkerCallbacks(assignment));
  std::string give_up;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (worker.ok() && !shut_down_ && !stopping_ && !spare_) {
      spare_ = *worker;
      spare_assignment_ = assignment;
      spdlog::info("worker pid={} phase=spare started (hosts nothing until a group needs a worker)", spare_->pid());
      return;
    }
    if (!worker.ok()) {
      spdlog::error("phase=spare cannot start a spare worker {}: {}", options_.worker.worker_path,
                    worker.status().ToString());
      if (recovery_.StartFailed("")) {
        give_up = absl::StrCat(recovery_.failed_starts(""), " worker starts in a row failed; last: ",
                               worker.status().message());
      }
      ++spare_failures_;
      WantSpareLocked(Clock::now() + SpareDelayLocked());
    }
  }
  if (worker.ok()) (*worker)->Stop(std::chrono::milliseconds(2000));  // not wanted any more
  if (!give_up.empty()) GiveUp(give_up);
}

std::chrono::milliseconds Supervisor::SpareDelayLocked() const {
  if (spare_failures_ == 0) return options_.restart.backoff_initial;
  auto delay = options_.restart.backoff_initial * (int64_t{1} << std::min(spare_failures_ - 1, 16));
  return std::min(options_.restart.backoff_max, delay);
}

void Supervisor::OnSpareExit(pid_t pid, const WorkerExit& exit) {
  std::string give_up;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (spare_ && spare_->pid() == pid) {
      spare_.reset();
      spare_assignment_.reset();
    }
    if (shut_down_ || stopping_) return;  // stopped with relibd
    spdlog::warn("worker pid={} phase=spare the spare worker ended: {}", pid, exit.reason);
    // A spare that could not even start is a failed worker start like any
    // other (a broken relib-worker makes relibd give up); one that died later
    // (killed from outside) is replaced after a short delay.
    if (!exit.ready) {
      ++spare_failures_;
      if (recovery_.StartFailed("")) {
        give_up = absl::StrCat(recovery_.failed_starts(""), " worker starts in a row failed; last: ", exit.reason);
      }
    }
    if (give_up.empty()) WantSpareLocked(Clock::now() + SpareDelayLocked());
  }
  if (!give_up.empty()) GiveUp(give_up);
}

absl::StatusOr<std::shared_ptr<WorkerHandle>> Supervisor::EnsureWorker(const std::string& group) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (shut_down_ || stopping_) return absl::UnavailableError("relibd is shutting down");
  Group& g = groups_[group];
  if (g.worker && g.worker->alive()) return g.worker;
  if (std::shared_ptr<WorkerHandle> spare = TakeSpareLocked(group)) {
    g.worker = std::move(spare);
    spdlog::info("worker pid={} group={} phase=spare the spare worker serves the group", g.worker->pid(), group);
    Publish(v1::EVENT_KIND_WORKER_STARTED, "", 0, g.worker->pid(), group);
    return g.worker;
  }
  auto assignment = std::make_shared<Assignment>();
  assignment->group = group;
  auto worker = WorkerHandle::Start(io_, options_.worker, group, options_.worker.limits.For(group),
                                    WorkerCallbacks(assignment));
  if (!worker.ok()) {
    spdlog::error("group={} phase=spawn cannot start worker {}: {}", group, options_.worker.worker_path,
                  worker.status().ToString());
    bool give_up = recovery_.StartFailed(group);
    int failed = recovery_.failed_starts(group);
    lock.unlock();
    if (give_up) GiveUp(absl::StrCat(failed, " worker starts in a row failed; last: ", worker.status().message()));
    return absl::UnavailableError(absl::StrCat("cannot start relib-worker: ", worker.status().message()));
  }
  g.worker = *worker;
  spdlog::info("worker pid={} group={} started", g.worker->pid(), group);
  Publish(v1::EVENT_KIND_WORKER_STARTED, "", 0, g.worker->pid(), group);
  return g.worker;
}

absl::StatusOr<std::string> Supervisor::StageCopy(const std::string& name, uint64_t version,
                                                  const std::string& path, bool own_copy) {
  std::string copy = absl::StrCat(options_.good_dir, "/", name, ".v", version, ".so");
  std::string source = path;
  if (options_.module_dirs != nullptr && !own_copy) {
    auto allowed = options_.module_dirs->Check(path);
    if (!allowed.ok()) return allowed.status();
    source = *allowed;  // symlinks resolved: the very file that was checked
  }
  // A worker under another user reads the copy through its group; nobody
  // else may, and it stays read-only (never written again, see CopyModuleFile).
  std::optional<gid_t> group;
  if (options_.worker.run_as) group = options_.worker.run_as->gid;
  good_copies_.ForgetRemoval(copy);
  if (absl::Status copied = CopyModuleFile(source, copy, options_.max_module_bytes, group, good_copies_.TakeSpare());
      !copied.ok()) {
    return copied;
  }
  // A worker of relibd's user hard-links this copy and proves it unused with
  // a lease: no child of relibd's may still hold its write descriptor.
  common::AwaitSpawnsUnderWay();
  return copy;
}

// Below this size a worker under another user copies the file itself: the
// copy is its own, so its unload check can prove "unmapped" with a file lease
// (agent/file_in_use.h), a few µs, where a file relibd owns needs the scan of
// /proc/self/maps (~150 µs on a worker of ~180 mappings). Copying 512 KiB
// costs about as much; above it the link wins (a 5 MB copy is ~1.2 ms).
constexpr uint64_t kPlaceInScratchBytes = 512 << 10;

std::string Supervisor::PlaceInScratch(WorkerHandle& worker, const std::string& copy,
                                       v1::link::LoadCommand& load) const {
  if (!options_.worker.run_as) return "";  // a worker of relibd's own user links relibd's copy itself
  struct stat st {};
  if (::stat(copy.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) < kPlaceInScratchBytes) return "";
  // The name is new in this worker, so dlopen can never answer with another
  // version it still has mapped under the same name.
  std::string placed = absl::StrCat(worker.scratch_dir(), "/", load.name(), ".v", load.version(), ".placed",
                                    worker.NextPlacementId(), ".so");
  if (::link(copy.c_str(), placed.c_str()) != 0) return "";
  load.set_path(placed);
  load.set_placed_in_scratch(true);
  return placed;
}

void Supervisor::OnWorkerLog(pid_t pid, const v1::link::Log& log) {
  auto level = static_cast<spdlog::level::level_enum>(std::clamp(log.level(), 0, 5));
  // Module text is any bytes: escaped, it cannot start a line of its own.
  spdlog::log(level, "module={} worker pid={} {}", log.module(), pid,
              common::EscapeForLog(log.text(), kMaxLogTextBytes));
}

void Supervisor::OnWorkerUsage(pid_t pid, const v1::link::Usage& usage) {
  int64_t now = NowUnixMs();
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& module : usage.modules()) {
    auto it = modules_.find(module.name());
    if (it == modules_.end() || it->second->info.worker_pid() != pid) continue;
    auto* stats = it->second->info.mutable_stats();
    stats->set_heap_bytes(module.heap_bytes());
    stats->set_heap_blocks(module.heap_blocks());
    stats->set_threads(module.threads());
    stats->set_open_fds(module.open_fds());
    stats->set_usage_unix_ms(now);
  }
}

void Supervisor::OnWorkerExit(const std::string& group, pid_t pid, const WorkerExit& exit) {
  struct Change {
    std::string name;
    uint64_t version;
    std::string message;
  };
  std::vector<Change> changes;
  std::string give_up;
  std::optional<Clock::time_point> restart_at;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shut_down_ || stopping_) return;  // an orderly stop, not a failure
    Group& g = groups_[group];
    if (g.worker && g.worker->pid() == pid) g.worker.reset();
    const auto now = Clock::now();
    const RestartPolicy& policy = recovery_.policy();
    if (!exit.ready && recovery_.StartFailed(group)) {
      give_up = absl::StrCat(recovery_.failed_starts(group), " worker starts in a row failed; last: ", exit.reason);
    }
    // Modules it hosted, and modules it was restoring when it died.
    std::vector<std::string> affected;
    for (auto& [name, record] : modules_) {
      const v1::ModuleInfo& info = record->info;
      bool hosted = info.worker_pid() == pid && info.state() == v1::MODULE_STATE_LOADED;
      bool restoring = info.worker() == group && info.state() == v1::MODULE_STATE_RESTARTING;
      if (hosted || restoring) affected.push_back(name);
    }
    std::vector<std::string> charged = Recovery::Charged(affected, exit.blamed_module, exit.ready);
    bool restart = false;
    for (const std::string& name : affected) {
      v1::ModuleInfo& info = modules_[name]->info;
      bool is_charged = std::find(charged.begin(), charged.end(), name) != charged.end();
      if (!is_charged && info.state() == v1::MODULE_STATE_RESTARTING) {
        restart = true;  // still waiting for its restore; nothing new to say
        continue;
      }
      int crashes = is_charged ? recovery_.AddCrash(name, now) : static_cast<int>(info.recent_crashes());
      info.set_recent_crashes(static_cast<uint32_t>(crashes));
      info.set_worker_pid(0);
      bool gave_up = is_charged && recovery_.GivesUp(crashes);
      std::string message =
          gave_up ? absl::StrCat("gave up: crashed its worker ", crashes, " times within ", policy.window.count(),
                                 " s (limit ", policy.max_restarts, "); last: ", exit.reason)
                  : absl::StrCat("restarting: ", exit.reason);
      info.set_state(gave_up ? v1::MODULE_STATE_FAILED : v1::MODULE_STATE_RESTARTING);
      info.set_last_error(message);
      restart = restart || !gave_up;
      changes.push_back({name, info.version(), message});
    }
    if (restart && give_up.empty()) {
      restart_at = now + recovery_.BackoffAfterDeath(group, now);
      spdlog::info("group={} phase=restart next worker in {} ms", group,
                   std::chrono::duration_cast<std::chrono::milliseconds>(*restart_at - now).count());
    }
  }
  Publish(v1::EVENT_KIND_WORKER_EXITED, "", 0, pid, exit.reason);
  for (const Change& change : changes) {
    spdlog::error("module={} version={} worker pid={} phase=worker-exit {}", change.name, change.version, pid,
                  change.message);
    Publish(v1::EVENT_KIND_FAILED, change.name, change.version, pid, change.message);
  }
  // Queued only now: a first restart starts at once, and its events must
  // follow the ones of the death.
  if (restart_at) {
    std::lock_guard<std::mutex> lock(mutex_);
    restart_queue_.emplace_back(*restart_at, group);
  }
  restart_wakeup_.notify_all();
  if (!give_up.empty()) GiveUp(give_up);
}

void Supervisor::GiveUp(const std::string& why) {
  spdlog::critical("phase=supervise cannot start relib-worker ({}): {}", options_.worker.worker_path, why);
  if (options_.on_fatal) options_.on_fatal(why);
}

bool Supervisor::LostWorker(const std::string& group, const std::shared_ptr<WorkerHandle>& worker,
                            Record& record, const std::string& why) {
  auto it = groups_.find(group);
  if (it != groups_.end() && it->second.worker == worker) return false;  // alive, or its exit is still to come
  // Its exit was handled before this module counted as loaded there: restart
  // it like the modules the exit did see.
  record.info.set_state(v1::MODULE_STATE_RESTARTING);
  record.info.set_worker_pid(0);
  record.info.set_last_error(why);
  restart_queue_.emplace_back(Clock::now() + options_.restart.backoff_initial, group);
  restart_wakeup_.notify_all();
  return true;
}

void Supervisor::RestartLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!shut_down_) {
    // Restarts first: a spare is started only when no restart is due.
    auto next = std::min_element(restart_queue_.begin(), restart_queue_.end());
    const auto now = Clock::now();
    if (next != restart_queue_.end() && next->first <= now) {
      std::string group = next->second;
      restart_queue_.erase(next);
      lock.unlock();
      RestartGroup(group);
      lock.lock();
      continue;
    }
    if (spare_due_ && *spare_due_ <= now) {
      spare_due_.reset();
      if (spare_enabled_ && !spare_ && !stopping_) {
        lock.unlock();
        StartSpare();
        lock.lock();
      }
      continue;
    }
    std::optional<Clock::time_point> wake = spare_due_;
    if (next != restart_queue_.end() && (!wake || next->first < *wake)) wake = next->first;
    if (wake) {
      restart_wakeup_.wait_until(lock, *wake);
    } else {
      restart_wakeup_.wait(lock);
    }
  }
}

void Supervisor::RestartGroup(const std::string& group) {
  std::vector<std::string> names;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [name, record] : modules_) {
      if (record->info.worker() == group && record->info.state() == v1::MODULE_STATE_RESTARTING) names.push_back(name);
    }
  }
  if (names.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    recovery_.RestartBegins(group, Clock::now());
  }
  auto worker = EnsureWorker(group);
  if (!worker.ok()) {
    // Try again later (fork or mkdtemp may fail transiently).
    std::lock_guard<std::mutex> lock(mutex_);
    restart_queue_.emplace_back(Clock::now() + options_.restart.backoff_max, group);
    return;
  }
  for (const std::string& name : names) {
    auto record = Find(name);
    if (!record) continue;
    std::lock_guard<std::mutex> operation(record->operation);
    v1::ModuleInfo info;
    std::string good_copy;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (record->info.state() != v1::MODULE_STATE_RESTARTING) continue;  // the user got there first
      info = record->info;
      good_copy = record->good_copy;
    }
    std::vector<common::UniqueFd> fds;
    auto command = LoadCommand(name, good_copy, info.path(), info.version(), info.options(), false, fds);
    auto reply = (*worker)->Request(std::move(command), absl::StrCat("restore of module '", name, "'"),
                                    CommandDeadline(info.options(), {common::Phase::kLoad, common::Phase::kOnLoad}),
                                    std::move(fds));
    if (!reply.ok()) break;  // the new worker died as well: OnWorkerExit has scheduled the next attempt
    absl::Status status = ReplyStatus(*reply);
    std::lock_guard<std::mutex> lock(mutex_);
    if (status.ok() && groups_[group].worker != *worker) {
      break;  // died right after: still RESTARTING, and its exit scheduled the next attempt
    }
    if (status.ok()) {
      record->info.set_state(v1::MODULE_STATE_LOADED);
      record->info.set_worker_pid((*worker)->pid());
      ApplyLoadResult(reply->load(), record->info);
      spdlog::info("module={} version={} worker pid={} phase=restore restored", name, info.version(),
                   (*worker)->pid());
      Publish(v1::EVENT_KIND_RESTARTED, name, info.version(), (*worker)->pid(),
              absl::StrCat("version ", info.version(), " restored after: ", info.last_error()));
    } else {
      record->info.set_state(v1::MODULE_STATE_FAILED);
      record->info.set_last_error(absl::StrCat("restore failed: ", status.message()));
      Publish(v1::EVENT_KIND_FAILED, name, info.version(), (*worker)->pid(), record->info.last_error());
    }
  }
  // The backoff is reset by the worker staying up (Recovery::BackoffAfterDeath),
  // not by the restores succeeding: a worker may die right after them.
}

absl::StatusOr<v1::ModuleInfo> Supervisor::Load(const std::string& name, const std::string& path,
                                                 const v1::ModuleOptions& options, const std::string& group_in,
                                                 v1::ModuleSource source) {
  const std::string group = group_in.empty() ? kDefaultGroup : group_in;
  if (absl::Status status = ValidateName(name, "module"); !status.ok()) return status;
  if (absl::Status status = ValidateName(group, "worker"); !status.ok()) return status;
  if (absl::Status status = ValidatePath(path); !status.ok()) return status;
  auto record = std::make_shared<Record>();
  std::unique_lock<std::mutex> operation(record->operation);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = modules_.find(name);
    if (it != modules_.end()) {
      const v1::ModuleInfo& existing = it->second->info;
      return absl::AlreadyExistsError(absl::StrCat(
          "module '", name, "' is already loaded",
          existing.state() == v1::MODULE_STATE_FAILED ? " (failed; reload or unload it)" : "",
          existing.version() > 0 ? absl::StrCat(" (version ", existing.version(), " from ", existing.path(), ")")
                                 : " (load in progress)"));
    }
    recovery_.Forget(name);  // a new module: crashes of an earlier one by that name do not count
    record->info.set_name(name);
    record->info.set_path(path);
    record->info.set_worker(group);
    record->info.set_source(source);
    record->info.set_state(v1::MODULE_STATE_LOADING);
    *record->info.mutable_options() = options;
    modules_[name] = record;
  }
  std::string candidate;
  auto fail = [&](const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      modules_.erase(name);
    }
    for (const std::string& key : fd_store_.Drop(name)) {
      if (options_.on_fd_dropped) options_.on_fd_dropped(name, key);
    }
    RemoveFile(candidate);
    spdlog::error("module={} path={} phase=load {}", name, common::EscapeForLog(path, 4096),
                  common::EscapeForLog(std::string(status.message()), 8192));
    Publish(v1::EVENT_KIND_FAILED, name, 0, 0, std::string(status.message()));
    return status;
  };
  auto staged = StageCopy(name, 1, path);
  if (!staged.ok()) return fail(staged.status());
  candidate = *staged;
  auto worker = EnsureWorker(group);
  if (!worker.ok()) return fail(worker.status());
  if (auto it = options_.preopened_fds.find(name); it != options_.preopened_fds.end()) {
    for (const auto& [key, fd] : it->second) {
      absl::Status stored = fd_store_.Put(name, key, common::UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3)));
      if (!stored.ok()) return fail(stored);
    }
  }
  std::vector<common::UniqueFd> fds;
  auto command = LoadCommand(name, candidate, path, 1, options, false, fds);
  const std::string placed = PlaceInScratch(**worker, candidate, *command.mutable_load());
  auto reply = (*worker)->Request(std::move(command), absl::StrCat("load of module '", name, "'"),
                                  CommandDeadline(options, {common::Phase::kLoad, common::Phase::kOnLoad}),
                                  std::move(fds), {}, [this] { good_copies_.Replenish(); });
  // On success the worker owns the placed file; otherwise it may never have seen it.
  if (!reply.ok() || !ReplyStatus(*reply).ok()) RemoveFile(placed);
  if (!reply.ok()) return fail(reply.status());
  if (absl::Status status = ReplyStatus(*reply); !status.ok()) return fail(status);
  v1::ModuleInfo info;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    record->info.set_state(v1::MODULE_STATE_LOADED);
    record->info.set_version(1);
    record->info.set_worker_pid((*worker)->pid());
    record->good_copy = candidate;
    ApplyLoadResult(reply->load(), record->info);
    info = record->info;
    std::string why = absl::StrCat("worker pid ", (*worker)->pid(), " died right after loading module '", name,
                                   "'; restarting it");
    if (LostWorker(group, *worker, *record, why)) return absl::UnavailableError(why);
  }
  Persist(info, candidate);
  spdlog::info("module={} version=1 worker pid={} group={} phase=load loaded from {}", name, info.worker_pid(), group,
               common::EscapeForLog(path, 4096));
  Publish(v1::EVENT_KIND_LOADED, name, 1, info.worker_pid(), path);
  return info;
}

absl::Status Supervisor::TryInScratchWorker(const std::string& name, const std::string& candidate,
                                            const std::string& path, uint64_t version,
                                            const v1::ModuleOptions& options) {
  WorkerHandle::Callbacks callbacks;
  callbacks.on_log = [this](pid_t pid, const v1::link::Log& log) { OnWorkerLog(pid, log); };
  // The trial's saves and fds stay in the trial worker (it can read them
  // back) and go away with it: production's state is not touched.
  callbacks.on_save_state = [](pid_t, const v1::link::SaveState&) { return absl::OkStatus(); };
  callbacks.on_store_fd = [](pid_t, const v1::link::StoreFd&, common::UniqueFd) { return absl::OkStatus(); };
  callbacks.phase_deadline = [this, options](const std::string&, common::Phase phase) {
    return PhaseDeadline(options, phase);
  };
  std::shared_ptr<WorkerHandle> handle;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shut_down_) return absl::UnavailableError("relibd is shutting down");
    auto started = WorkerHandle::Start(io_, options_.worker, "staging-" + name,
                                       options_.worker.limits.For("staging-" + name), std::move(callbacks));
    if (!started.ok()) return started.status();
    handle = *started;
    scratch_workers_.push_back(handle);
  }
  auto prefix = [&](const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat("staged reload of module '", name, "' failed in scratch worker pid ",
                                                    handle->pid(), ", production untouched: ", status.message()));
  };
  // A copy of the state, no fds: the trial must not serve production traffic,
  // and its saves are not kept (see the callbacks above).
  std::vector<common::UniqueFd> no_fds;
  auto reply = handle->Request(LoadCommand(name, candidate, path, version, options, true, no_fds),
                                   absl::StrCat("staged load of module '", name, "'"),
                                   CommandDeadline(options, {common::Phase::kLoad, common::Phase::kOnLoad}));
  absl::Status status = reply.ok() ? ReplyStatus(*reply) : reply.status();
  if (status.ok()) {
    const auto& exports = reply->load().exports();
    if (std::find(exports.begin(), exports.end(), kSelfTestExport) != exports.end()) {
      v1::link::ToWorker command;
      command.mutable_call()->set_name(name);
      command.mutable_call()->set_export_name(kSelfTestExport);
      command.mutable_call()->set_deadline_ms(
          static_cast<uint32_t>(PhaseDeadline(options, common::Phase::kCall).count()));
      auto tested = handle->Request(std::move(command), absl::StrCat("self_test of module '", name, "'"),
                                        CommandDeadline(options, {common::Phase::kCall}));
      status = tested.ok() ? ReplyStatus(*tested) : tested.status();
    }
  }
  handle->Stop(std::chrono::milliseconds(1000));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase(scratch_workers_, handle);
  }
  if (!status.ok()) return prefix(status);
  spdlog::info("module={} version={} phase=staged passed in scratch worker pid={}", name, version, handle->pid());
  return absl::OkStatus();
}

absl::StatusOr<v1::ReloadResponse> Supervisor::Reload(const std::string& name, const std::string& new_path,
                                                      bool force, const v1::ModuleOptions* new_options, bool staged,
                                                      v1::UnloadReport* failure_report, const std::string& cause) {
  const auto started = std::chrono::steady_clock::now();
  auto record = Find(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
  std::unique_lock<std::mutex> operation(record->operation);
  v1::ModuleInfo before;
  std::string old_good_copy;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = modules_.find(name);
    if (it == modules_.end() || it->second != record) {
      return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
    }
    before = record->info;
    old_good_copy = record->good_copy;
  }
  std::string path = new_path.empty() ? before.path() : new_path;
  if (absl::Status status = ValidatePath(path); !status.ok()) return status;
  uint64_t version = before.version() + 1;
  bool fresh = before.state() != v1::MODULE_STATE_LOADED;
  const v1::ModuleOptions options = new_options ? *new_options : before.options();
  std::string candidate;

  auto fail = [&](const absl::Status& status, bool module_gone) {
    RemoveFile(candidate);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (module_gone && record->info.state() == v1::MODULE_STATE_LOADED) {
        record->info.set_state(v1::MODULE_STATE_FAILED);
        record->info.set_worker_pid(0);
        record->info.set_last_error(std::string(status.message()));
      } else if (fresh && record->info.state() == v1::MODULE_STATE_FAILED) {
        record->info.set_last_error(std::string(status.message()));
      }
      if (failure_report && !failure_report->name().empty()) record->last_failure_report = *failure_report;
    }
    spdlog::error("module={} version={} path={} phase=reload{} {}", name, version, common::EscapeForLog(path, 4096),
                  cause.empty() ? "" : " cause=" + cause, common::EscapeForLog(std::string(status.message()), 8192));
    Publish(v1::EVENT_KIND_FAILED, name, before.version(), before.worker_pid(), std::string(status.message()),
            failure_report && !failure_report->name().empty() ? failure_report : nullptr, cause);
    return status;
  };

  auto copy = StageCopy(name, version, path);
  if (!copy.ok()) return fail(copy.status(), false);
  candidate = *copy;
  if (staged) {
    if (absl::Status status = TryInScratchWorker(name, candidate, path, version, options); !status.ok()) {
      return fail(status, false);
    }
  }
  auto worker = EnsureWorker(before.worker());
  if (!worker.ok()) return fail(worker.status(), false);
  std::vector<common::UniqueFd> fds;
  v1::link::ToWorker command = LoadCommand(name, candidate, path, version, options, false, fds);
  const std::string placed = PlaceInScratch(**worker, candidate, *command.mutable_load());
  std::chrono::milliseconds deadline;
  if (fresh) {
    deadline = CommandDeadline(options, {common::Phase::kLoad, common::Phase::kOnLoad});
  } else {
    v1::link::LoadCommand load = std::move(*command.mutable_load());
    auto* reload = command.mutable_reload();
    *reload->mutable_load() = std::move(load);
    reload->set_force(force);
    // Worst case: a failed on_load, its cleanup and the rollback to the old version.
    deadline = CommandDeadline(options, {common::Phase::kLoad, common::Phase::kBeforeUnload,
                                         common::Phase::kUnloadChecks, common::Phase::kOnLoad,
                                         common::Phase::kUnloadChecks, common::Phase::kLoad, common::Phase::kOnLoad});
  }
  const auto sent = std::chrono::steady_clock::now();
  auto reply = (*worker)->Request(std::move(command), absl::StrCat("reload of module '", name, "'"), deadline,
                                  std::move(fds), {}, [this] { good_copies_.Replenish(); });
  const auto answered = std::chrono::steady_clock::now();
  // On success the worker owns the placed file; otherwise it may never have seen it.
  if (!reply.ok() || !ReplyStatus(*reply).ok()) RemoveFile(placed);
  // A dead or killed worker already marked the module RESTARTING or FAILED (OnWorkerExit).
  if (!reply.ok()) return fail(reply.status(), true);
  v1::ReloadResponse response;
  if (absl::Status status = ReplyStatus(*reply); !status.ok()) {
    bool gone = !fresh && !reply->reload().old_version_loaded();
    if (failure_report && reply->reload().has_report()) *failure_report = reply->reload().report();
    return fail(status, gone);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    v1::ModuleInfo& info = record->info;
    info.set_state(v1::MODULE_STATE_LOADED);
    info.set_version(version);
    info.set_path(path);
    info.set_worker_pid((*worker)->pid());
    info.clear_last_error();
    *info.mutable_options() = options;
    ApplyLoadResult(fresh ? reply->load() : reply->reload().load(), info);
    *response.mutable_module() = info;
    record->good_copy = candidate;
    std::string why = absl::StrCat("worker pid ", (*worker)->pid(), " died right after reloading module '", name,
                                   "' to version ", version, "; restarting it at that version");
    if (LostWorker(before.worker(), *worker, *record, why)) {
      RemoveFile(old_good_copy);
      return absl::UnavailableError(why);
    }
  }
  good_copies_.RemoveLater(old_good_copy);  // after the reply: nothing refers to it any more
  Persist(response.module(), candidate);
  if (!fresh) {
    *response.mutable_report() = reply->reload().report();
    response.set_swap_pause_micros(reply->reload().swap_pause_micros());
  }
  spdlog::info("module={} version={}->{} worker pid={} phase=reload unmapped={}", name, before.version(), version,
               response.module().worker_pid(), response.report().unmapped());
  Publish(v1::EVENT_KIND_RELOADED, name, version, response.module().worker_pid(), path,
          fresh ? nullptr : &response.report(), cause);
  // The watcher follows watched modules only (waking it costs a copy of the
  // table). Even with the same path it resyncs: a symlinked path may have
  // been re-pointed, and the watcher follows the link's current target.
  if (before.watch()) NotifyChange();
  auto micros = [](auto from, auto to) {
    return std::chrono::duration_cast<std::chrono::microseconds>(to - from).count();
  };
  response.set_worker_round_trip_micros(micros(sent, answered));
  response.set_worker_handling_micros(reply->handling_micros());
  response.set_daemon_micros(micros(started, std::chrono::steady_clock::now()));
  return response;
}

absl::StatusOr<v1::UnloadReport> Supervisor::Unload(const std::string& name, bool force,
                                                    v1::UnloadReport* failure_report) {
  auto record = Find(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
  std::unique_lock<std::mutex> operation(record->operation);
  v1::ModuleInfo info;
  std::string good_copy;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = modules_.find(name);
    if (it == modules_.end() || it->second != record) {
      return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
    }
    info = record->info;
    good_copy = record->good_copy;
    if (info.state() != v1::MODULE_STATE_LOADED) {
      // Its worker is gone, so is its code: forgetting the name is all there is to do.
      modules_.erase(it);
    }
  }
  v1::UnloadReport report;
  if (info.state() != v1::MODULE_STATE_LOADED) {
    report.set_name(name);
    report.set_version(info.version());
    report.set_path(info.path());
    report.set_unmapped(true);
  } else {
    std::shared_ptr<WorkerHandle> worker;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& group = groups_[info.worker()];
      if (group.worker && group.worker->pid() == info.worker_pid()) worker = group.worker;
    }
    if (!worker) return absl::UnavailableError(absl::StrCat("worker of module '", name, "' is gone"));
    v1::link::ToWorker command;
    command.mutable_unload()->set_name(name);
    command.mutable_unload()->set_force(force);
    auto reply = worker->Request(std::move(command), absl::StrCat("unload of module '", name, "'"),
                                 CommandDeadline(info.options(),
                                                 {common::Phase::kBeforeUnload, common::Phase::kUnloadChecks}));
    absl::Status status = reply.ok() ? ReplyStatus(*reply) : reply.status();
    if (!status.ok()) {
      const v1::UnloadReport* partial = reply.ok() && reply->has_unload() ? &reply->unload() : nullptr;
      if (partial && failure_report) *failure_report = *partial;
      if (partial) {
        std::lock_guard<std::mutex> lock(mutex_);
        record->last_failure_report = *partial;
      }
      spdlog::error("module={} version={} phase=unload {}", name, info.version(), std::string(status.message()));
      Publish(v1::EVENT_KIND_FAILED, name, info.version(), info.worker_pid(), std::string(status.message()), partial);
      return status;
    }
    report = reply->unload();
    std::lock_guard<std::mutex> lock(mutex_);
    modules_.erase(name);
  }
  RemoveFile(good_copy);
  for (const std::string& key : fd_store_.Drop(name)) {
    if (options_.on_fd_dropped) options_.on_fd_dropped(name, key);
  }
  if (options_.table != nullptr) {
    if (absl::Status removed = options_.table->Remove(name); !removed.ok()) {
      spdlog::error("module={} phase=unload cannot remove it from the module table: {}", name, removed.ToString());
    }
  }
  spdlog::info("module={} version={} phase=unload unmapped={}", name, info.version(), report.unmapped());
  Publish(v1::EVENT_KIND_UNLOADED, name, info.version(), info.worker_pid(), "", &report);
  NotifyChange();
  return report;
}

absl::StatusOr<v1::ModuleInfo> Supervisor::SetWatch(const std::string& name, bool watch) {
  auto record = Find(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
  // Between operations: a reload finishing between the read below and the
  // Persist would otherwise have its new version overwritten by the one read
  // here in the state dir (and its copy removed as no longer stored).
  std::lock_guard<std::mutex> operation(record->operation);
  v1::ModuleInfo info;
  std::string good_copy;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    record->info.set_watch(watch);
    info = record->info;
    good_copy = record->good_copy;
  }
  if (!good_copy.empty()) Persist(info, good_copy);
  spdlog::info("module={} phase=watch {} path={}", name, watch ? "on" : "off", common::EscapeForLog(info.path()));
  NotifyChange();
  return info;
}

absl::StatusOr<v1::CallResponse> Supervisor::Call(const std::string& name, const std::string& export_name,
                                                  const std::string& input) {
  std::shared_ptr<Record> record;
  std::shared_ptr<WorkerHandle> worker;
  uint64_t version = 0;
  std::chrono::milliseconds call_deadline, queue_deadline, backstop;
  {
    // The module is looked up under the same lock as its state (one lock
    // per call instead of two, each contended by the other callers).
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = modules_.find(name);
    if (found == modules_.end()) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
    record = found->second;
    const v1::ModuleInfo& info = record->info;
    if (info.state() != v1::MODULE_STATE_LOADED) {
      std::string why = info.state() == v1::MODULE_STATE_FAILED       ? absl::StrCat(" (failed: ", info.last_error(), ")")
                        : info.state() == v1::MODULE_STATE_RESTARTING ? absl::StrCat(" (", info.last_error(), ")")
                                                                       : " (load in progress)";
      return absl::FailedPreconditionError(absl::StrCat("module '", name, "' is not loaded", why));
    }
    auto& group = groups_[info.worker()];
    if (group.worker && group.worker->pid() == info.worker_pid()) worker = group.worker;
    version = info.version();
    // The worker enforces the queue deadline and the flight recorder the
    // call's own (from when it starts running); the backstop only catches a
    // worker that stops answering: queue + call + a swap the call may be held
    // for (the old version's in-flight calls, its unload, the new on_load).
    const v1::ModuleOptions& options = info.options();
    call_deadline = PhaseDeadline(options, common::Phase::kCall);
    queue_deadline =
        options.queue_deadline_ms() > 0 ? std::chrono::milliseconds(options.queue_deadline_ms()) : call_deadline;
    backstop = queue_deadline + CommandDeadline(options, {common::Phase::kCall, common::Phase::kCall,
                                                          common::Phase::kBeforeUnload, common::Phase::kUnloadChecks,
                                                          common::Phase::kOnLoad});
  }
  if (!worker) return absl::UnavailableError(absl::StrCat("worker of module '", name, "' is gone"));
  v1::link::ToWorker command;
  auto* call = command.mutable_call();
  call->set_name(name);
  call->set_export_name(export_name);
  call->set_deadline_ms(static_cast<uint32_t>(call_deadline.count()));
  call->set_queue_deadline_ms(static_cast<uint32_t>(queue_deadline.count()));
  // The input goes on the wire from the request itself (no copy).
  auto reply = worker->Request(std::move(command), absl::StrCat("call '", export_name, "' of module '", name, "'"),
                               backstop, {}, input);
  absl::Status status = reply.ok() ? ReplyStatus(*reply) : reply.status();
  // The version that ran it (a reload may have swapped it since `version` was read).
  if (status.ok() && reply->call().version() != 0) version = reply->call().version();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto* stats = record->info.mutable_stats();
    stats->set_calls(stats->calls() + 1);
    if (!status.ok()) stats->set_call_errors(stats->call_errors() + 1);
  }
  if (!status.ok()) {
    spdlog::warn("module={} version={} phase=call export={} {}", name, version, common::EscapeForLog(export_name, 256),
                 common::EscapeForLog(std::string(status.message()), 8192));
    return status;
  }
  v1::CallResponse response;
  response.set_output(std::move(*reply->mutable_call()->mutable_output()));
  response.set_version(version);
  return response;
}

v1::StatusResponse Supervisor::Status(bool with_reports) const {
  // Fresh usage from every worker (its link reader answers at once, even
  // while calls run); a worker that does not answer in time shows its last.
  std::vector<std::shared_ptr<WorkerHandle>> workers;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [group, g] : groups_) {
      if (g.worker && g.worker->alive()) workers.push_back(g.worker);
    }
  }
  for (const auto& worker : workers) worker->PollUsage(kUsagePollTimeout);
  v1::StatusResponse response;
  response.set_daemon_pid(::getpid());
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, record] : modules_) {
    v1::ModuleInfo* info = response.add_modules();
    *info = record->info;
    if (with_reports && !record->last_failure_report.name().empty()) {
      *info->mutable_last_failure_report() = record->last_failure_report;
    }
  }
  for (const auto& [group, g] : groups_) {
    if (!g.worker || !g.worker->alive()) continue;
    auto* worker = response.add_workers();
    worker->set_name(group);
    worker->set_pid(g.worker->pid());
    worker->set_started_at_unix_ms(g.worker->started_at_unix_ms());
    for (const auto& [name, record] : modules_) {
      if (record->info.worker_pid() == g.worker->pid()) worker->add_modules(name);
    }
  }
  return response;
}

std::vector<v1::ModuleInfo> Supervisor::Modules() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<v1::ModuleInfo> modules;
  modules.reserve(modules_.size());
  for (const auto& [name, record] : modules_) modules.push_back(record->info);
  return modules;
}

void Supervisor::Persist(const v1::ModuleInfo& info, const std::string& file) {
  if (options_.table == nullptr) return;
  if (absl::Status saved = options_.table->Put(info, file); !saved.ok()) {
    spdlog::error("module={} version={} phase=persist not in the module table, so a restart of relibd will not "
                  "bring it back: {}",
                  info.name(), info.version(), saved.ToString());
  }
}

void Supervisor::AdoptStoredFd(const std::string& module, const std::string& key, common::UniqueFd fd) {
  if (absl::Status stored = fd_store_.Put(module, key, std::move(fd)); !stored.ok()) {
    spdlog::warn("module={} phase=restore stored fd not taken back: {}", module, stored.ToString());
  }
}

std::pair<int, int> Supervisor::Restore(const std::vector<ModuleTable::Entry>& entries) {
  std::vector<std::string> groups;
  for (const ModuleTable::Entry& entry : entries) {
    const v1::ModuleInfo& module = entry.module;
    auto record = std::make_shared<Record>();
    record->info = module;
    record->info.set_state(v1::MODULE_STATE_RESTARTING);
    record->info.set_last_error("restoring after a restart of relibd");
    // relibd's working copy comes from the table's copy (which stays as it is).
    auto copy = StageCopy(module.name(), module.version(), entry.copy, /*own_copy=*/true);
    if (copy.ok()) {
      record->good_copy = *copy;
      if (std::find(groups.begin(), groups.end(), module.worker()) == groups.end()) groups.push_back(module.worker());
    } else {
      record->info.set_state(v1::MODULE_STATE_FAILED);
      record->info.set_last_error(absl::StrCat("restore failed: ", copy.status().message()));
      spdlog::error("module={} version={} phase=restore {}", module.name(), module.version(),
                    record->info.last_error());
    }
    std::lock_guard<std::mutex> lock(mutex_);
    modules_[module.name()] = record;
  }
  good_copies_.Replenish();
  for (const std::string& group : groups) RestartGroup(group);
  int restored = 0, failed = 0;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, record] : modules_) {
    if (record->info.state() == v1::MODULE_STATE_LOADED) {
      ++restored;
    } else {
      ++failed;
      // Crashed its worker while restoring: the restarter keeps trying (and
      // gives up as for any crash loop); the table keeps it either way.
    }
  }
  NotifyChange();  // watched modules are watched again
  return {restored, failed};
}

void Supervisor::GracefulStop(std::chrono::milliseconds bound) {
  const auto deadline = Clock::now() + bound;
  struct Target {
    std::string name;
    uint64_t version;
    v1::ModuleOptions options;
    std::shared_ptr<WorkerHandle> worker;
  };
  std::vector<Target> targets;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (const auto& [name, record] : modules_) {
      const v1::ModuleInfo& info = record->info;
      if (info.state() != v1::MODULE_STATE_LOADED) continue;
      auto it = groups_.find(info.worker());
      if (it == groups_.end() || !it->second.worker || it->second.worker->pid() != info.worker_pid()) continue;
      targets.push_back({name, info.version(), info.options(), it->second.worker});
    }
  }
  // One thread per group: groups stop side by side, modules of a group one
  // after another (a worker runs one command at a time).
  std::map<std::shared_ptr<WorkerHandle>, std::vector<Target>> by_worker;
  for (Target& target : targets) by_worker[target.worker].push_back(std::move(target));
  std::vector<std::thread> stoppers;
  for (auto& [worker, modules] : by_worker) {
    stoppers.emplace_back([this, deadline, worker = worker, modules = std::move(modules)] {
      for (const Target& target : modules) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        auto own = CommandDeadline(target.options, {common::Phase::kBeforeUnload, common::Phase::kUnloadChecks});
        if (left.count() <= 0 || !worker->alive()) break;
        v1::link::ToWorker command;
        command.mutable_unload()->set_name(target.name);
        command.mutable_unload()->set_force(true);
        auto reply = worker->Request(std::move(command), absl::StrCat("stop of module '", target.name, "'"),
                                     std::min(left, own));
        absl::Status status = reply.ok() ? ReplyStatus(*reply) : reply.status();
        if (status.ok()) {
          spdlog::info("module={} version={} worker pid={} phase=stop before_unload ran; unloaded for the stop",
                       target.name, target.version, worker->pid());
        } else {
          spdlog::warn("module={} version={} worker pid={} phase=stop {}", target.name, target.version, worker->pid(),
                       std::string(status.message()));
        }
      }
    });
  }
  for (std::thread& stopper : stoppers) stopper.join();
  Shutdown();
}

void Supervisor::Shutdown() {
  std::vector<std::shared_ptr<WorkerHandle>> workers;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shut_down_ && !restarter_.joinable()) return;
    shut_down_ = true;
    for (auto& [group, g] : groups_) {
      if (g.worker) workers.push_back(std::move(g.worker));
    }
    for (auto& scratch : scratch_workers_) workers.push_back(scratch);
    if (spare_) workers.push_back(std::move(spare_));
    spare_assignment_.reset();
  }
  // Workers first: a restore in progress then fails fast and the restarter exits.
  for (auto& worker : workers) worker->Stop(std::chrono::milliseconds(2000));
  restart_wakeup_.notify_all();
  if (restarter_.joinable()) restarter_.join();
  auto deadline = Clock::now() + std::chrono::seconds(3);
  for (auto& worker : workers) {
    while (worker->alive() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // The good copies only matter to this run of relibd.
  std::error_code ignored;
  std::filesystem::remove_all(options_.good_dir, ignored);
}

}  // namespace relib::daemon
