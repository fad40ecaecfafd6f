#include "daemon/supervisor.h"

#include <unistd.h>

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status ValidateName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid module name '", name, "': use 1-64 characters from [A-Za-z0-9_.-]"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePath(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("module path '", path, "' must be absolute"));
  }
  return absl::OkStatus();
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

}  // namespace

Supervisor::Supervisor(boost::asio::io_context& io, SupervisorOptions options, EventBus& events)
    : io_(io), options_(std::move(options)), events_(events) {}

Supervisor::~Supervisor() { Shutdown(); }

void Supervisor::Publish(v1::EventKind kind, const std::string& module, uint64_t version, int32_t pid,
                         const std::string& message, const v1::UnloadReport* report) {
  v1::Event event;
  event.set_kind(kind);
  event.set_module(module);
  event.set_version(version);
  event.set_worker_pid(pid);
  event.set_message(message);
  if (report != nullptr) *event.mutable_report() = *report;
  events_.Publish(std::move(event));
}

std::shared_ptr<Supervisor::Record> Supervisor::Find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = modules_.find(name);
  return it == modules_.end() ? nullptr : it->second;
}

absl::StatusOr<std::shared_ptr<WorkerHandle>> Supervisor::EnsureWorker() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (shut_down_) return absl::UnavailableError("relibd is shutting down");
  if (worker_ && worker_->alive()) return worker_;
  WorkerHandle::Callbacks callbacks;
  callbacks.on_exit = [this](pid_t pid, const std::string& reason) { OnWorkerExit(pid, reason); };
  callbacks.on_log = [this](pid_t pid, const v1::link::Log& log) { OnWorkerLog(pid, log); };
  callbacks.on_usage = [this](pid_t pid, const v1::link::Usage& usage) { OnWorkerUsage(pid, usage); };
  auto worker = WorkerHandle::Start(io_, options_.worker, std::move(callbacks));
  if (!worker.ok()) {
    spdlog::error("phase=spawn cannot start worker {}: {}", options_.worker.worker_path,
                  worker.status().ToString());
    return absl::UnavailableError(absl::StrCat("cannot start relib-worker: ", worker.status().message()));
  }
  worker_ = *worker;
  spdlog::info("worker pid={} started", worker_->pid());
  Publish(v1::EVENT_KIND_WORKER_STARTED, "", 0, worker_->pid(), "");
  return worker_;
}

void Supervisor::OnWorkerLog(pid_t pid, const v1::link::Log& log) {
  auto level = static_cast<spdlog::level::level_enum>(std::clamp(log.level(), 0, 5));
  spdlog::log(level, "module={} worker pid={} {}", log.module(), pid, log.text());
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

void Supervisor::OnWorkerExit(pid_t pid, const std::string& reason) {
  std::vector<std::pair<std::string, uint64_t>> failed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shut_down_) return;  // an orderly stop, not a failure
    if (worker_ && worker_->pid() == pid) worker_.reset();
    for (auto& [name, record] : modules_) {
      v1::ModuleInfo& info = record->info;
      if (info.worker_pid() != pid) continue;
      info.set_state(v1::MODULE_STATE_FAILED);
      info.set_worker_pid(0);
      info.set_last_error(reason);
      failed.emplace_back(name, info.version());
    }
  }
  Publish(v1::EVENT_KIND_WORKER_EXITED, "", 0, pid, reason);
  for (const auto& [name, version] : failed) {
    spdlog::error("module={} version={} worker pid={} phase=worker-exit {}", name, version, pid, reason);
    Publish(v1::EVENT_KIND_FAILED, name, version, pid, reason);
  }
}

absl::StatusOr<v1::ModuleInfo> Supervisor::Load(const std::string& name, const std::string& path,
                                                 const v1::ModuleOptions& options) {
  if (absl::Status status = ValidateName(name); !status.ok()) return status;
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
    record->info.set_name(name);
    record->info.set_path(path);
    record->info.set_state(v1::MODULE_STATE_LOADING);
    *record->info.mutable_options() = options;
    modules_[name] = record;
  }
  auto fail = [&](const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      modules_.erase(name);
    }
    spdlog::error("module={} path={} phase=load {}", name, path, std::string(status.message()));
    Publish(v1::EVENT_KIND_FAILED, name, 0, 0, std::string(status.message()));
    return status;
  };
  auto worker = EnsureWorker();
  if (!worker.ok()) return fail(worker.status());
  v1::link::ToWorker command;
  command.mutable_load()->set_name(name);
  command.mutable_load()->set_path(path);
  command.mutable_load()->set_version(1);
  *command.mutable_load()->mutable_options() = options;
  auto reply = (*worker)->Request(std::move(command), absl::StrCat("load of module '", name, "'"),
                                  options_.deadlines.load);
  if (!reply.ok()) return fail(reply.status());
  if (absl::Status status = ReplyStatus(*reply); !status.ok()) return fail(status);
  v1::ModuleInfo info;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    record->info.set_state(v1::MODULE_STATE_LOADED);
    record->info.set_version(1);
    record->info.set_worker_pid((*worker)->pid());
    ApplyLoadResult(reply->load(), record->info);
    info = record->info;
  }
  spdlog::info("module={} version=1 worker pid={} phase=load loaded from {}", name, info.worker_pid(), path);
  Publish(v1::EVENT_KIND_LOADED, name, 1, info.worker_pid(), path);
  return info;
}

absl::StatusOr<v1::ReloadResponse> Supervisor::Reload(const std::string& name, const std::string& new_path,
                                                      bool force, const v1::ModuleOptions* new_options,
                                                      v1::UnloadReport* failure_report) {
  auto record = Find(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
  std::unique_lock<std::mutex> operation(record->operation);
  v1::ModuleInfo before;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (modules_.count(name) == 0 || modules_[name] != record) {
      return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
    }
    before = record->info;
  }
  std::string path = new_path.empty() ? before.path() : new_path;
  if (absl::Status status = ValidatePath(path); !status.ok()) return status;
  uint64_t version = before.version() + 1;
  bool fresh = before.state() != v1::MODULE_STATE_LOADED;
  const v1::ModuleOptions& options = new_options ? *new_options : before.options();

  auto fail = [&](const absl::Status& status, bool module_gone) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (module_gone && record->info.state() != v1::MODULE_STATE_FAILED) {
        record->info.set_state(v1::MODULE_STATE_FAILED);
        record->info.set_worker_pid(0);
        record->info.set_last_error(std::string(status.message()));
      } else if (fresh) {
        record->info.set_last_error(std::string(status.message()));
      }
    }
    spdlog::error("module={} version={} path={} phase=reload {}", name, version, path, std::string(status.message()));
    Publish(v1::EVENT_KIND_FAILED, name, before.version(), before.worker_pid(), std::string(status.message()),
            failure_report && !failure_report->name().empty() ? failure_report : nullptr);
    return status;
  };

  auto worker = EnsureWorker();
  if (!worker.ok()) return fail(worker.status(), false);
  v1::link::ToWorker command;
  std::chrono::milliseconds deadline = options_.deadlines.load;
  if (fresh) {
    command.mutable_load()->set_name(name);
    command.mutable_load()->set_path(path);
    command.mutable_load()->set_version(version);
    *command.mutable_load()->mutable_options() = options;
  } else {
    auto* reload = command.mutable_reload();
    reload->set_name(name);
    reload->set_path(path);
    reload->set_version(version);
    reload->set_force(force);
    *reload->mutable_options() = options;
    deadline += options_.deadlines.unload;
  }
  auto reply = (*worker)->Request(std::move(command), absl::StrCat("reload of module '", name, "'"), deadline);
  // A dead or killed worker already marked the module FAILED (OnWorkerExit).
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
  }
  if (!fresh) *response.mutable_report() = reply->reload().report();
  spdlog::info("module={} version={}->{} worker pid={} phase=reload unmapped={}", name, before.version(), version,
               response.module().worker_pid(), response.report().unmapped());
  Publish(v1::EVENT_KIND_RELOADED, name, version, response.module().worker_pid(), path,
          fresh ? nullptr : &response.report());
  return response;
}

absl::StatusOr<v1::UnloadReport> Supervisor::Unload(const std::string& name, bool force,
                                                     v1::UnloadReport* failure_report) {
  auto record = Find(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
  std::unique_lock<std::mutex> operation(record->operation);
  v1::ModuleInfo info;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = modules_.find(name);
    if (it == modules_.end() || it->second != record) {
      return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
    }
    info = record->info;
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
    auto worker = EnsureWorker();
    if (!worker.ok()) return worker.status();
    if ((*worker)->pid() != info.worker_pid()) {
      return absl::UnavailableError(absl::StrCat("worker of module '", name, "' is gone"));
    }
    v1::link::ToWorker command;
    command.mutable_unload()->set_name(name);
    command.mutable_unload()->set_force(force);
    auto reply = (*worker)->Request(std::move(command), absl::StrCat("unload of module '", name, "'"),
                                    options_.deadlines.unload);
    absl::Status status = reply.ok() ? ReplyStatus(*reply) : reply.status();
    if (!status.ok()) {
      const v1::UnloadReport* partial = reply.ok() && reply->has_unload() ? &reply->unload() : nullptr;
      if (partial && failure_report) *failure_report = *partial;
      spdlog::error("module={} version={} phase=unload {}", name, info.version(), std::string(status.message()));
      Publish(v1::EVENT_KIND_FAILED, name, info.version(), info.worker_pid(), std::string(status.message()), partial);
      return status;
    }
    report = reply->unload();
    std::lock_guard<std::mutex> lock(mutex_);
    modules_.erase(name);
  }
  spdlog::info("module={} version={} phase=unload unmapped={}", name, info.version(), report.unmapped());
  Publish(v1::EVENT_KIND_UNLOADED, name, info.version(), info.worker_pid(), "", &report);
  return report;
}

absl::StatusOr<v1::CallResponse> Supervisor::Call(const std::string& name, const std::string& export_name,
                                                  const std::string& input) {
  auto record = Find(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no module named '", name, "'"));
  std::shared_ptr<WorkerHandle> worker;
  uint64_t version = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const v1::ModuleInfo& info = record->info;
    if (info.state() != v1::MODULE_STATE_LOADED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "module '", name, "' is not loaded",
          info.state() == v1::MODULE_STATE_FAILED ? absl::StrCat(" (failed: ", info.last_error(), ")")
                                                  : " (load in progress)"));
    }
    if (worker_ && worker_->pid() == info.worker_pid()) worker = worker_;
    version = info.version();
  }
  if (!worker) return absl::UnavailableError(absl::StrCat("worker of module '", name, "' is gone"));
  v1::link::ToWorker command;
  command.mutable_call()->set_name(name);
  command.mutable_call()->set_export_name(export_name);
  command.mutable_call()->set_input(input);
  auto reply = worker->Request(std::move(command),
                               absl::StrCat("call '", export_name, "' of module '", name, "'"),
                               options_.deadlines.call);
  absl::Status status = reply.ok() ? ReplyStatus(*reply) : reply.status();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (record->info.version() == version) {
      auto* stats = record->info.mutable_stats();
      stats->set_calls(stats->calls() + 1);
      if (!status.ok()) stats->set_call_errors(stats->call_errors() + 1);
    }
  }
  if (!status.ok()) {
    spdlog::warn("module={} version={} phase=call export={} {}", name, version, export_name, std::string(status.message()));
    return status;
  }
  v1::CallResponse response;
  response.set_output(reply->call().output());
  response.set_version(version);
  return response;
}

v1::StatusResponse Supervisor::Status() const {
  v1::StatusResponse response;
  response.set_daemon_pid(::getpid());
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, record] : modules_) *response.add_modules() = record->info;
  if (worker_ && worker_->alive()) {
    auto* worker = response.add_workers();
    worker->set_pid(worker_->pid());
    worker->set_started_at_unix_ms(worker_->started_at_unix_ms());
    for (const auto& [name, record] : modules_) {
      if (record->info.worker_pid() == worker_->pid()) worker->add_modules(name);
    }
  }
  return response;
}

void Supervisor::Shutdown() {
  std::shared_ptr<WorkerHandle> worker;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shut_down_ = true;
    worker = std::move(worker_);
  }
  if (!worker) return;
  worker->Stop(std::chrono::milliseconds(2000));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (worker->alive() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace relib::daemon
