#include "daemon/module_watcher.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/log_text.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace {

constexpr uint32_t kDirectoryEvents = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF |
                                      IN_ONLYDIR;
// How often directories that could not be watched (not there yet) are tried again.
constexpr std::chrono::seconds kRetryUnwatchable{1};

std::string Show(const std::string& path) { return common::EscapeForLog(path, 256); }

}  // namespace

ModuleWatcher::ModuleWatcher(Supervisor& supervisor, std::chrono::milliseconds debounce)
    : supervisor_(supervisor),
      debounce_(debounce),
      inotify_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)),
      wakeup_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (!inotify_.valid()) {
    spdlog::error("phase=watch inotify unavailable ({}): watched modules will not reload", std::strerror(errno));
  }
  thread_ = std::thread([this] { Run(); });
}

ModuleWatcher::~ModuleWatcher() {
  stopping_ = true;
  Sync();
  thread_.join();
}

void ModuleWatcher::Sync() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wakeup_.get(), &one, sizeof one);
}

void ModuleWatcher::Run() {
  Resync();
  while (true) {
    int timeout_ms = -1;
    auto now = Clock::now();
    for (const auto& [name, watched] : modules_) {
      if (!watched.due) continue;
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(*watched.due - now).count() + 1;
      timeout_ms = timeout_ms < 0 ? std::max<int64_t>(wait, 0) : std::min<int64_t>(timeout_ms, std::max<int64_t>(wait, 0));
    }
    if (!unwatchable_.empty()) {
      int retry = static_cast<int>(std::chrono::milliseconds(kRetryUnwatchable).count());
      timeout_ms = timeout_ms < 0 ? retry : std::min(timeout_ms, retry);
    }
    pollfd fds[2] = {{wakeup_.get(), POLLIN, 0}, {inotify_.get(), POLLIN, 0}};
    int ready = ::poll(fds, inotify_.valid() ? 2 : 1, timeout_ms);
    if (ready < 0 && errno != EINTR) {
      spdlog::error("phase=watch poll failed: {}", std::strerror(errno));
      return;
    }
    if (fds[0].revents & POLLIN) {
      uint64_t count;
      [[maybe_unused]] ssize_t n = ::read(wakeup_.get(), &count, sizeof count);
      if (stopping_) return;
      Resync();
    }
    if (inotify_.valid() && (fds[1].revents & POLLIN)) ReadEvents();
    if (!unwatchable_.empty()) UpdateDirectoryWatches();
    ReloadDue();
  }
}

void ModuleWatcher::Resync() {
  std::map<std::string, Watched> wanted;
  // Names, paths and watch flags only: no worker is asked for its usage (a
  // resync follows every load, reload and unload).
  for (const v1::ModuleInfo& module : supervisor_.Modules()) {
    if (!module.watch() || module.path().empty()) continue;
    Watched& watched = wanted[module.name()];
    std::filesystem::path path(module.path());
    watched.targets.insert({path.parent_path().string(), path.filename().string()});
    // A symlink (libfoo.so -> libfoo.so.1.2) is rebuilt through its target.
    std::error_code error;
    auto real = std::filesystem::canonical(path, error);
    if (!error && real != path) watched.targets.insert({real.parent_path().string(), real.filename().string()});
    auto old = modules_.find(module.name());
    if (old != modules_.end() && old->second.targets == watched.targets) watched.due = old->second.due;
  }
  modules_ = std::move(wanted);
  UpdateDirectoryWatches();
}

void ModuleWatcher::UpdateDirectoryWatches() {
  if (!inotify_.valid()) return;
  std::set<std::string> needed;
  for (const auto& [name, watched] : modules_) {
    for (const Target& target : watched.targets) needed.insert(target.dir);
  }
  for (auto it = dir_watches_.begin(); it != dir_watches_.end();) {
    if (needed.count(it->first)) {
      ++it;
      continue;
    }
    ::inotify_rm_watch(inotify_.get(), it->second);
    dirs_by_watch_.erase(it->second);
    it = dir_watches_.erase(it);
  }
  std::set<std::string> still_unwatchable;
  for (const std::string& dir : needed) {
    if (dir_watches_.count(dir)) continue;
    int wd = ::inotify_add_watch(inotify_.get(), dir.c_str(), kDirectoryEvents);
    if (wd < 0) {
      if (!unwatchable_.count(dir)) {
        spdlog::warn("phase=watch cannot watch directory {}: {} (trying again every second)", Show(dir),
                     std::strerror(errno));
      }
      still_unwatchable.insert(dir);
      continue;
    }
    if (unwatchable_.count(dir)) spdlog::info("phase=watch watching directory {} now", Show(dir));
    dir_watches_[dir] = wd;
    dirs_by_watch_[wd] = dir;
  }
  unwatchable_ = std::move(still_unwatchable);
}

void ModuleWatcher::ReadEvents() {
  alignas(inotify_event) char buffer[16384];
  while (true) {
    ssize_t n = ::read(inotify_.get(), buffer, sizeof buffer);
    if (n <= 0) break;  // EAGAIN: drained
    for (char* p = buffer; p < buffer + n;) {
      const auto* event = reinterpret_cast<const inotify_event*>(p);
      p += sizeof(inotify_event) + event->len;
      if (event->mask & IN_Q_OVERFLOW) {
        // Events were lost: treat every watched module as possibly rebuilt.
        for (auto& [name, watched] : modules_) watched.due = Clock::now() + debounce_;
        continue;
      }
      auto dir = dirs_by_watch_.find(event->wd);
      if (dir == dirs_by_watch_.end()) continue;
      if (event->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
        // The directory went away (a clean build): watch it again once it is back.
        if (event->mask & IN_IGNORED) {
          unwatchable_.insert(dir->second);
          dir_watches_.erase(dir->second);
          dirs_by_watch_.erase(dir);
        }
        continue;
      }
      if (event->len == 0) continue;
      const std::string file(event->name);
      // IN_CREATE alone is not a finished build (a new file is being written);
      // its IN_CLOSE_WRITE follows.
      const bool complete = event->mask & (IN_CLOSE_WRITE | IN_MOVED_TO);
      for (auto& [name, watched] : modules_) {
        if (!watched.targets.count({dir->second, file})) continue;
        // A write postpones a reload already due; only a finished write makes one due.
        if (complete || watched.due) watched.due = Clock::now() + debounce_;
      }
    }
  }
}

void ModuleWatcher::ReloadDue() {
  auto now = Clock::now();
  std::vector<std::string> due;
  for (auto& [name, watched] : modules_) {
    if (watched.due && *watched.due <= now) {
      watched.due.reset();
      due.push_back(name);
    }
  }
  for (const std::string& name : due) {
    if (stopping_) return;
    spdlog::info("module={} phase=watch new build complete; reloading", name);
    v1::UnloadReport report;
    auto result = supervisor_.Reload(name, "", false, nullptr, false, &report, "watch");
    if (!result.ok()) {
      spdlog::warn("module={} phase=watch reload of the new build failed: {}", name,
                   std::string(result.status().message()));
    }
  }
}

}  // namespace relib::daemon
