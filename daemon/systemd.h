// systemd glue (libsystemd): the notify protocol (READY, STATUS, STOPPING,
// WATCHDOG, FDSTORE) and the fds systemd hands relibd at start (socket
// activation, fds kept in the fd store across a restart). Every call is a
// no-op without systemd (NOTIFY_SOCKET, LISTEN_FDS unset).
#ifndef RELIB_DAEMON_SYSTEMD_H_
#define RELIB_DAEMON_SYSTEMD_H_

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/unique_fd.h"

namespace relib::daemon::systemd {

// What systemd passed at start (LISTEN_FDS / LISTEN_FDNAMES).
struct PassedFds {
  // The API's listening socket (relibd.socket): a passed fd that is a
  // listening socket and not named as a stored module fd.
  std::optional<common::UniqueFd> api_socket;
  // Module fds systemd kept for relibd (FDSTORE): {module, key, fd}.
  struct Stored {
    std::string module;
    std::string key;
    common::UniqueFd fd;
  };
  std::vector<Stored> stored;
  // Passed fds that were neither (closed); for the startup log.
  std::vector<std::string> ignored;
};

// Takes the passed fds (O_CLOEXEC from now on) and removes LISTEN_* from the
// environment so workers do not inherit them. Call once, early in main.
PassedFds TakePassedFds();

// FDNAME of a module's stored fd: "fd/<module>/<key in hex>"; nullopt if it
// does not fit systemd's 255-character limit.
std::optional<std::string> StoredFdName(const std::string& module, const std::string& key);

// Thread-safe (sd_notify is).
class Notifier {
 public:
  Notifier();
  bool enabled() const { return enabled_; }
  void Ready(const std::string& status) const;
  void Status(const std::string& status) const;
  void Stopping(const std::string& status) const;
  // RELOADING=1 with MONOTONIC_USEC (a config reload begins; Ready ends it).
  void Reloading() const;
  void Watchdog() const;
  // The interval at which WATCHDOG=1 must come (WatchdogSec); nullopt if off.
  std::optional<std::chrono::microseconds> WatchdogInterval() const { return watchdog_; }
  // FDSTORE=1 of `fd` (duplicated by the kernel) under StoredFdName; a fd
  // already stored under that name is removed first.
  void StoreFd(const std::string& module, const std::string& key, int fd) const;
  // FDSTOREREMOVE=1 of the fd under that name.
  void RemoveFd(const std::string& module, const std::string& key) const;

 private:
  bool enabled_ = false;
  std::optional<std::chrono::microseconds> watchdog_;
};

}  // namespace relib::daemon::systemd

#endif  // RELIB_DAEMON_SYSTEMD_H_
