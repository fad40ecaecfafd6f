#include "daemon/systemd.h"

#include <time.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "spdlog/spdlog.h"

namespace relib::daemon::systemd {
namespace {

constexpr char kStoredPrefix[] = "fd/";

bool IsListeningSocket(int fd) {
  int listening = 0;
  socklen_t length = sizeof(listening);
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0 && listening != 0;
}

}  // namespace

std::optional<std::string> StoredFdName(const std::string& module, const std::string& key) {
  std::string name = absl::StrCat(kStoredPrefix, module, "/", absl::BytesToHexString(key));
  if (name.size() > 255) return std::nullopt;
  return name;
}

PassedFds TakePassedFds() {
  PassedFds passed;
  char** names = nullptr;
  int count = sd_listen_fds_with_names(/*unset_environment=*/1, &names);
  if (count < 0) {
    spdlog::warn("phase=startup LISTEN_FDS: {}", std::strerror(-count));
    count = 0;
  }
  for (int i = 0; i < count; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    common::UniqueFd owned(fd);
    std::string name = names && names[i] ? names[i] : "";
    if (name.rfind(kStoredPrefix, 0) == 0) {
      std::vector<std::string> parts = absl::StrSplit(name.substr(sizeof(kStoredPrefix) - 1), absl::MaxSplits('/', 1));
      if (parts.size() == 2) {
        passed.stored.push_back({parts[0], absl::HexStringToBytes(parts[1]), std::move(owned)});
        continue;
      }
    } else if (!passed.api_socket && IsListeningSocket(fd)) {
      passed.api_socket = std::move(owned);
      continue;
    }
    passed.ignored.push_back(name.empty() ? absl::StrCat("fd ", fd) : name);
  }
  if (names) {
    for (int i = 0; i < count; ++i) std::free(names[i]);
    std::free(names);
  }
  return passed;
}

Notifier::Notifier() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  enabled_ = socket != nullptr && *socket != '\0';
  uint64_t usec = 0;
  if (enabled_ && sd_watchdog_enabled(/*unset_environment=*/0, &usec) > 0 && usec > 0) {
    watchdog_ = std::chrono::microseconds(usec);
  }
}

void Notifier::Ready(const std::string& status) const {
  if (enabled_) sd_notify(0, absl::StrCat("READY=1\nSTATUS=", status).c_str());
}

void Notifier::Status(const std::string& status) const {
  if (enabled_) sd_notify(0, absl::StrCat("STATUS=", status).c_str());
}

void Notifier::Stopping(const std::string& status) const {
  if (enabled_) sd_notify(0, absl::StrCat("STOPPING=1\nSTATUS=", status).c_str());
}

void Notifier::Reloading() const {
  if (!enabled_) return;
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t usec = static_cast<uint64_t>(now.tv_sec) * 1000000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
  sd_notify(0, absl::StrCat("RELOADING=1\nMONOTONIC_USEC=", usec).c_str());
}

void Notifier::Watchdog() const {
  if (enabled_) sd_notify(0, "WATCHDOG=1");
}

void Notifier::StoreFd(const std::string& module, const std::string& key, int fd) const {
  if (!enabled_) return;
  std::optional<std::string> name = StoredFdName(module, key);
  if (!name) {
    spdlog::warn("module={} phase=store-fd key too long for systemd's fd store: kept by relibd only", module);
    return;
  }
  sd_notify(0, absl::StrCat("FDSTOREREMOVE=1\nFDNAME=", *name).c_str());
  int rc = sd_pid_notify_with_fds(0, 0, absl::StrCat("FDSTORE=1\nFDNAME=", *name).c_str(), &fd, 1);
  if (rc < 0) spdlog::warn("module={} phase=store-fd FDSTORE: {}", module, std::strerror(-rc));
}

void Notifier::RemoveFd(const std::string& module, const std::string& key) const {
  if (!enabled_) return;
  if (std::optional<std::string> name = StoredFdName(module, key)) {
    sd_notify(0, absl::StrCat("FDSTOREREMOVE=1\nFDNAME=", *name).c_str());
  }
}

}  // namespace relib::daemon::systemd
