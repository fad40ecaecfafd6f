// relibd's self-probe: at each interval a fresh connection to its own API
// socket and a Status call. Only an answer feeds systemd's watchdog
// (WATCHDOG=1), so a relibd that is alive but no longer serves — e.g. a
// listener gRPC gave up after running out of fds — is restarted by systemd.
// Each answer also refreshes STATUS= (modules loaded/failed).
#ifndef RELIB_DAEMON_SELF_PROBE_H_
#define RELIB_DAEMON_SELF_PROBE_H_

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "daemon/systemd.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// "3 modules loaded, 1 failed, 2 workers" for STATUS=.
std::string StatusLine(const v1::StatusResponse& status);

class SelfProbe {
 public:
  // Probes `target` (a gRPC address, "unix:/path") every `interval` from a
  // thread of its own; `notifier` must outlive the probe.
  SelfProbe(std::string target, std::chrono::milliseconds interval, const systemd::Notifier& notifier);
  // Stops probing (joins).
  ~SelfProbe();

 private:
  void Loop();
  bool ProbeOnce(v1::StatusResponse* status);

  const std::string target_;
  const std::chrono::milliseconds interval_;
  const systemd::Notifier& notifier_;
  std::mutex mutex_;
  std::condition_variable wakeup_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_SELF_PROBE_H_
