#include "daemon/config_apply.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace {

constexpr char kDefaultGroup[] = "default";

std::string ChangeName(v1::ConfigChange change) {
  switch (change) {
    case v1::CONFIG_CHANGE_ADDED: return "added";
    case v1::CONFIG_CHANGE_REMOVED: return "removed";
    case v1::CONFIG_CHANGE_CHANGED: return "changed";
    case v1::CONFIG_CHANGE_UNCHANGED: return "unchanged";
    case v1::CONFIG_CHANGE_FAILED: return "failed";
    default: return "unknown";
  }
}

std::string GroupOf(const ModuleConfig& module) { return module.group.empty() ? kDefaultGroup : module.group; }

}  // namespace

std::vector<std::string> RestartNeeded(const std::vector<FlagSetting>& before, const std::vector<FlagSetting>& after) {
  std::map<std::string, std::pair<std::string, std::string>> values;  // key -> (before, after)
  // A list key appears once per element: its elements joined.
  auto add = [](std::string& to, const std::string& value) { to = to.empty() ? value : absl::StrCat(to, ", ", value); };
  for (const auto& s : before) add(values[s.key].first, s.value);
  for (const auto& s : after) add(values[s.key].second, s.value);
  std::vector<std::string> changed;
  for (const auto& [key, value] : values) {
    if (value.first == value.second) continue;
    changed.push_back(absl::StrCat(key, " changed (", value.first.empty() ? "unset" : value.first, " -> ",
                                   value.second.empty() ? "unset" : value.second,
                                   "): takes effect when relibd restarts"));
  }
  return changed;
}

ConfigApplier::ConfigApplier(Supervisor& supervisor, EventBus& events, RelibdConfig config)
    : supervisor_(supervisor), events_(events), config_(std::move(config)), started_settings_(config_.settings) {
  started_settings_.insert(started_settings_.end(), config_.limits.begin(), config_.limits.end());
}

ConfigApplier::~ConfigApplier() {
  {
    std::lock_guard<std::mutex> lock(background_mutex_);
    stopping_ = true;
  }
  background_wakeup_.notify_all();
  if (background_.joinable()) background_.join();
}

void ConfigApplier::Record(v1::ReloadConfigResponse& response, const std::string& module, v1::ConfigChange change,
                           const std::string& message, const v1::ModuleInfo* info) {
  v1::ConfigOutcome* outcome = response.add_modules();
  outcome->set_module(module);
  outcome->set_change(change);
  outcome->set_message(message);
  if (info) *outcome->mutable_info() = *info;
  std::string text = message.empty() ? ChangeName(change) : absl::StrCat(ChangeName(change), ": ", message);
  if (change == v1::CONFIG_CHANGE_FAILED) {
    spdlog::error("module={} phase=config {}", module, text);
  } else {
    spdlog::info("module={} version={} worker pid={} phase=config {}", module, info ? info->version() : 0,
                 info ? info->worker_pid() : 0, text);
  }
  v1::Event event;
  event.set_kind(v1::EVENT_KIND_CONFIG);
  event.set_module(module);
  if (info) {
    event.set_version(info->version());
    event.set_worker_pid(info->worker_pid());
  }
  event.set_message(text);
  event.set_cause("config");
  events_.Publish(std::move(event));
}

v1::ReloadConfigResponse ConfigApplier::Apply() {
  std::lock_guard<std::mutex> lock(apply_mutex_);
  spdlog::info("phase=config applying {} ({} module(s))", config_.file, config_.modules.size());
  return ApplyLocked(config_);
}

absl::StatusOr<v1::ReloadConfigResponse> ConfigApplier::Reload(const std::string& trigger) {
  if (before_reload_) before_reload_();
  absl::StatusOr<v1::ReloadConfigResponse> result;
  {
    std::lock_guard<std::mutex> lock(apply_mutex_);
    spdlog::info("phase=config reloading {} ({})", config_.file, trigger);
    auto parsed = ParseConfigFile(config_.file);
    if (!parsed.ok()) {
      // NOT_FOUND for an unreadable file is still a bad file to the caller.
      absl::Status status(absl::StatusCode::kInvalidArgument, parsed.status().message());
      spdlog::error("phase=config {}; keeping the running configuration", std::string(status.message()));
      v1::Event event;
      event.set_kind(v1::EVENT_KIND_FAILED);
      event.set_message(absl::StrCat("config file refused: ", status.message(), "; keeping the running configuration"));
      event.set_cause("config");
      events_.Publish(std::move(event));
      result = status;
    } else {
      v1::ReloadConfigResponse response = ApplyLocked(*parsed);
      std::vector<FlagSetting> now = parsed->settings;
      now.insert(now.end(), parsed->limits.begin(), parsed->limits.end());
      for (const std::string& line : RestartNeeded(started_settings_, now)) {
        spdlog::warn("phase=config {}", line);
        response.add_restart_needed(line);
      }
      config_ = std::move(parsed).value();
      result = std::move(response);
    }
  }
  if (after_reload_) after_reload_();
  return result;
}

void ConfigApplier::ReloadInBackground(const std::string& trigger) {
  std::lock_guard<std::mutex> lock(background_mutex_);
  if (stopping_) return;
  pending_.push_back(trigger);
  if (!background_.joinable()) {
    background_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(background_mutex_);
      while (true) {
        background_wakeup_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
        if (stopping_) return;
        std::string why = pending_.front();
        pending_.clear();  // several requests while one runs: one more run covers them all
        lock.unlock();
        (void)Reload(why);
        lock.lock();
      }
    });
  }
  background_wakeup_.notify_all();
}

v1::ReloadConfigResponse ConfigApplier::ApplyLocked(const RelibdConfig& wanted) {
  v1::ReloadConfigResponse response;
  response.set_file(wanted.file);
  std::map<std::string, v1::ModuleInfo> running;
  const v1::StatusResponse status = supervisor_.Status();
  for (const auto& module : status.modules()) running[module.name()] = module;
  std::map<std::string, const ModuleConfig*> declared;
  for (const auto& module : wanted.modules) declared[module.name] = &module;

  // Removed first: frees their names and resources for what follows.
  for (const auto& [name, info] : running) {
    if (info.source() != v1::MODULE_SOURCE_CONFIG || declared.count(name)) continue;
    v1::UnloadReport failure;
    auto report = supervisor_.Unload(name, /*force=*/false, &failure);
    if (report.ok()) {
      Record(response, name, v1::CONFIG_CHANGE_REMOVED, absl::StrCat("unloaded version ", info.version()), nullptr);
    } else {
      Record(response, name, v1::CONFIG_CHANGE_FAILED,
             absl::StrCat("not in the file any more, but its unload failed (it keeps running): ",
                          report.status().message()),
             &info);
    }
  }

  auto load = [&](const ModuleConfig& module) -> absl::StatusOr<v1::ModuleInfo> {
    auto info = supervisor_.Load(module.name, module.path, module.options, module.group, v1::MODULE_SOURCE_CONFIG);
    if (info.ok() && module.watch) info = supervisor_.SetWatch(module.name, true);
    return info;
  };

  for (const ModuleConfig& module : wanted.modules) {
    const std::string& name = module.name;
    auto it = running.find(name);
    if (it == running.end()) {
      auto info = load(module);
      if (info.ok()) {
        Record(response, name, v1::CONFIG_CHANGE_ADDED,
               absl::StrCat("loaded from ", module.path, " in group '", GroupOf(module), "'",
                            module.watch ? ", watched" : ""),
               &*info);
      } else {
        Record(response, name, v1::CONFIG_CHANGE_FAILED,
               absl::StrCat("load from ", module.path, " failed (line ", module.line, "): ", info.status().message()),
               nullptr);
      }
      continue;
    }
    const v1::ModuleInfo& info = it->second;
    if (info.source() != v1::MODULE_SOURCE_CONFIG) {
      Record(response, name, v1::CONFIG_CHANGE_FAILED,
             absl::StrCat("a module named '", name,
                          "' was loaded through the API; the file does not take it over (unload it, or rename "
                          "[modules.",
                          name, "] at line ", module.line, ")"),
             &info);
      continue;
    }
    if (info.worker() != GroupOf(module)) {
      v1::UnloadReport failure;
      auto unloaded = supervisor_.Unload(name, /*force=*/false, &failure);
      if (!unloaded.ok()) {
        Record(response, name, v1::CONFIG_CHANGE_FAILED,
               absl::StrCat("moving it from group '", info.worker(), "' to '", GroupOf(module),
                            "' needs an unload, which failed (it keeps running in '", info.worker(),
                            "'): ", unloaded.status().message()),
               &info);
        continue;
      }
      auto loaded = load(module);
      if (loaded.ok()) {
        Record(response, name, v1::CONFIG_CHANGE_CHANGED,
               absl::StrCat("moved from group '", info.worker(), "' to '", GroupOf(module), "' (unloaded and loaded)"),
               &*loaded);
      } else {
        Record(response, name, v1::CONFIG_CHANGE_FAILED,
               absl::StrCat("unloaded from group '", info.worker(), "' but the load in '", GroupOf(module),
                            "' failed: ", loaded.status().message()),
               nullptr);
      }
      continue;
    }
    const bool path_changed = info.path() != module.path;
    const bool options_changed =
        !google::protobuf::util::MessageDifferencer::Equals(info.options(), module.options);
    if (path_changed || options_changed) {
      v1::UnloadReport failure;
      auto reloaded = supervisor_.Reload(name, module.path, /*force=*/false, &module.options, /*staged=*/false,
                                         &failure, "config");
      if (!reloaded.ok()) {
        Record(response, name, v1::CONFIG_CHANGE_FAILED,
               absl::StrCat("reload with the file's ", path_changed ? "path" : "options", " failed: ",
                            reloaded.status().message()),
               &info);
        continue;
      }
      v1::ModuleInfo now = reloaded->module();
      if (now.watch() != module.watch) {
        if (auto watched = supervisor_.SetWatch(name, module.watch); watched.ok()) now = *watched;
      }
      std::string what = path_changed && options_changed ? "path and options" : path_changed ? "path" : "options";
      Record(response, name, v1::CONFIG_CHANGE_CHANGED,
             absl::StrCat("reloaded to version ", now.version(), " (", what, " changed",
                          path_changed ? absl::StrCat(": ", module.path) : "", ")"),
             &now);
      continue;
    }
    if (info.watch() != module.watch) {
      auto watched = supervisor_.SetWatch(name, module.watch);
      if (watched.ok()) {
        Record(response, name, v1::CONFIG_CHANGE_CHANGED, module.watch ? "watch on" : "watch off", &*watched);
      } else {
        Record(response, name, v1::CONFIG_CHANGE_FAILED, std::string(watched.status().message()), &info);
      }
      continue;
    }
    Record(response, name, v1::CONFIG_CHANGE_UNCHANGED, "", &info);
  }
  return response;
}

}  // namespace relib::daemon
