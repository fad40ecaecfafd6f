// relib-worker: hosts modules for relibd. Started by relibd only; speaks the
// worker link on the fd given by --link-fd.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "agent/agent.h"
#include "agent/alt_stack.h"
#include "agent/child_tracker.h"
#include "agent/crash_handler.h"
#include "agent/daemon_link.h"
#include "agent/heap_tracker.h"
#include "agent/heartbeat.h"
#include "agent/module_context.h"
#include "agent/parent_watch.h"
#include "common/flight_recorder.h"
#include "common/heap_reuse.h"
#include "common/journal_log.h"
#include "common/message_limits.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  relib::common::KeepFreedCallBuffers();
  CLI::App app("relib-worker: module host process started by relibd");
  int link_fd = -1;
  std::string scratch_dir;
  std::string log_level = "info";
  app.add_option("--link-fd", link_fd, "fd of the socket connected to relibd")->required();
  app.add_option("--scratch-dir", scratch_dir, "private directory for module copies")->required();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  std::string recorder_name;
  int fd_channel = -1;
  app.add_option("--fd-channel-fd", fd_channel, "fd of the socket relibd passes file descriptors on");
  app.add_option("--flight-recorder", recorder_name, "shared-memory flight recorder created by relibd");
  int recorder_fd = -1;
  app.add_option("--flight-recorder-fd", recorder_fd,
                 "fd of the flight recorder relibd handed over (a worker running as another user cannot open it)");
  uint64_t max_message_bytes = relib::common::MegabytesToBytes(relib::common::kDefaultMaxMessageMb);
  app.add_option("--max-message-bytes", max_message_bytes,
                 "relibd's gRPC message limit: sizes the link's frames and caps export outputs");
  relib::agent::HostLimits limits;
  app.add_option("--max-state-bytes", limits.state_bytes,
                 "the largest key plus value relibd's state store can keep for one module");
  std::string invalid_free = "abort";
  app.add_option("--invalid-free", invalid_free,
                 "when module code frees memory it does not own: abort (blamed on the module) or leak")
      ->check(CLI::IsMember({"abort", "leak"}));
  CLI11_PARSE(app, argc, argv);
  limits.frame_bytes = relib::common::LinkFrameLimit(max_message_bytes);
  relib::agent::heap::SetInvalidFreePolicy(invalid_free == "leak" ? relib::agent::heap::InvalidFreePolicy::kLeak
                                                                   : relib::agent::heap::InvalidFreePolicy::kAbort);

  // A dead daemon must not kill the worker mid-write; the failed write ends it.
  ::signal(SIGPIPE, SIG_IGN);
  auto logger = spdlog::stderr_color_mt("relib-worker");
  if (relib::common::StderrIsJournal()) {
    relib::common::UseJournalFormat(*logger, fmt::format("relib-worker[{}] ", ::getpid()));
  } else {
    logger->set_pattern(fmt::format("%Y-%m-%dT%H:%M:%S.%e %^%l%$ relib-worker[{}] %v", ::getpid()));
  }
  logger->set_level(spdlog::level::from_str(log_level));
  spdlog::set_default_logger(logger);

  // Orphaned descendants of module children stay in the worker's tree.
  if (!relib::agent::children::AdoptOrphans()) {
    spdlog::warn("phase=startup cannot become a child subreaper: {}", std::strerror(errno));
  }

  // Module code may fork and exec: the link must not leak into children.
  ::fcntl(link_fd, F_SETFD, FD_CLOEXEC);
  if (fd_channel >= 0) ::fcntl(fd_channel, F_SETFD, FD_CLOEXEC);
  // A worker whose relibd is gone ends, even while a call hangs in module code.
  relib::agent::WatchParent(link_fd, std::chrono::milliseconds(2000));

  // Lifecycle commands, and so module hooks, run on this thread (calls run on
  // the executors, which install their own alternate stacks).
  relib::agent::ScopedAltStack main_alt_stack;
  // Declared before what writes into it: destroyed after them.
  std::optional<relib::common::FlightRecorder> recorder;
  std::optional<relib::agent::ScopedCrashHandler> crash_handler;
  std::optional<relib::agent::Heartbeat> heartbeat;
  if (recorder_fd >= 0 || !recorder_name.empty()) {
    auto opened = recorder_fd >= 0 ? relib::common::FlightRecorder::OpenFd(recorder_fd)
                                   : relib::common::FlightRecorder::Open(recorder_name);
    if (!opened.ok()) {
      spdlog::error("phase=startup {}", opened.status().ToString());
      return 1;
    }
    recorder.emplace(std::move(opened).value());
    crash_handler.emplace(recorder->record());
    heartbeat.emplace(recorder->record());
  }

  relib::agent::DaemonLink link{relib::common::UniqueFd(link_fd), relib::common::UniqueFd(fd_channel),
                                 relib::common::LinkFrameLimit(max_message_bytes)};
  relib::agent::Agent agent(link, scratch_dir, recorder ? &*recorder : nullptr, limits);
  agent.set_output_limit(relib::common::OutputLimit(max_message_bytes));
  absl::Status status = agent.Run();
  if (!status.ok()) {
    spdlog::error("phase=link {}", status.ToString());
    return 1;
  }
  return 0;
}
