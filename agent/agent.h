// The in-worker agent: executes the daemon's commands against a ModuleLoader
// and answers over the DaemonLink. Embeddable in any main.
#ifndef RELIB_AGENT_AGENT_H_
#define RELIB_AGENT_AGENT_H_

#include <string>

#include "absl/status/status.h"
#include "agent/daemon_link.h"
#include "agent/module_loader.h"

namespace relib::v1::link {
class ToWorker;
class Reply;
}  // namespace relib::v1::link

namespace relib::agent {

class Agent {
 public:
  // `link` (and `recorder`, if not null) must outlive the agent. Module
  // copies go to `scratch_dir`.
  Agent(DaemonLink& link, std::string scratch_dir, common::FlightRecorder* recorder = nullptr);

  // Sends Hello, then executes commands one at a time until the daemon closes
  // the link (returns OK) or the link fails (returns the error).
  absl::Status Run();

 private:
  void Execute(const v1::link::ToWorker& command, v1::link::Reply& reply);
  void ForwardModuleLog(int level, const std::string& module, std::string_view text);
  absl::Status SendUsage();

  DaemonLink& link_;
  common::FlightRecorder* recorder_;
  ModuleLoader loader_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_AGENT_H_
