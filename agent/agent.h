// The in-worker agent: executes the daemon's commands against a ModuleLoader
// and answers over the DaemonLink. Embeddable in any main.
#ifndef RELIB_AGENT_AGENT_H_
#define RELIB_AGENT_AGENT_H_

#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "agent/daemon_link.h"
#include "agent/host_services.h"
#include "agent/module_loader.h"

namespace relib::v1::link {
class LoadCommand;
class ToWorker;
class Reply;
}  // namespace relib::v1::link

namespace relib::agent {

class Agent : public HostServices {
 public:
  // `link` (and `recorder`, if not null) must outlive the agent. Module
  // copies go to `scratch_dir`.
  Agent(DaemonLink& link, std::string scratch_dir, common::FlightRecorder* recorder = nullptr);

  // Sends Hello, then executes commands one at a time until the daemon closes
  // the link (returns OK) or the link fails (returns the error).
  absl::Status Run();

  // The most bytes one export call may output (see ModuleLoader).
  void set_output_limit(uint64_t bytes) { loader_.set_output_limit(bytes); }

  // HostServices: state and fds are cached here for the modules (filled by
  // each load command) and every change is forwarded to relibd, which owns
  // the real stores.
  absl::Status SaveState(const std::string& module, const std::string& key, std::string_view value) override;
  std::optional<std::string> LoadState(const std::string& module, const std::string& key) override;
  absl::Status StoreFd(const std::string& module, const std::string& key, int fd) override;
  int TakeFd(const std::string& module, const std::string& key) override;

 private:
  void Execute(const v1::link::ToWorker& command, v1::link::Reply& reply);
  // Takes a load command's state and fds into the caches for `module`.
  absl::Status AcceptResources(const std::string& module, const v1::link::LoadCommand& command);
  void DropResources(const std::string& module);
  void ForwardModuleLog(int level, const std::string& module, std::string_view text);
  absl::Status SendUsage();

  DaemonLink& link_;
  common::FlightRecorder* recorder_;
  std::mutex resources_mutex_;
  std::map<std::string, std::map<std::string, std::string>> state_;      // guarded by resources_mutex_
  std::map<std::string, std::map<std::string, common::UniqueFd>> fds_;  // guarded by resources_mutex_
  ModuleLoader loader_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_AGENT_H_
