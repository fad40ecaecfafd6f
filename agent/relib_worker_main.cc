// relib-worker: hosts modules for relibd. Started by relibd only; speaks the
// worker link on the fd given by --link-fd.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "agent/agent.h"
#include "agent/daemon_link.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  CLI::App app("relib-worker: module host process started by relibd");
  int link_fd = -1;
  std::string scratch_dir;
  std::string log_level = "info";
  app.add_option("--link-fd", link_fd, "fd of the socket connected to relibd")->required();
  app.add_option("--scratch-dir", scratch_dir, "private directory for module copies")->required();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  CLI11_PARSE(app, argc, argv);

  // A dead daemon must not kill the worker mid-write; the failed write ends it.
  ::signal(SIGPIPE, SIG_IGN);
  auto logger = spdlog::stderr_color_mt("relib-worker");
  logger->set_pattern(fmt::format("%Y-%m-%dT%H:%M:%S.%e %^%l%$ relib-worker[{}] %v", ::getpid()));
  logger->set_level(spdlog::level::from_str(log_level));
  spdlog::set_default_logger(logger);

  relib::agent::DaemonLink link{relib::common::UniqueFd(link_fd)};
  relib::agent::Agent agent(link, scratch_dir);
  absl::Status status = agent.Run();
  if (!status.ok()) {
    spdlog::error("phase=link {}", status.ToString());
    return 1;
  }
  return 0;
}
