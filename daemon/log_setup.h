// relibd's logging: the level names it accepts, the line format (its own
// under a terminal or file, the journal's under systemd: see
// common/journal_log.h), and gRPC's own log lines routed through the same
// logger.
#ifndef RELIB_DAEMON_LOG_SETUP_H_
#define RELIB_DAEMON_LOG_SETUP_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "spdlog/common.h"

namespace relib::daemon {

// The names --log-level accepts.
const std::vector<std::string>& LogLevelNames();
// INVALID_ARGUMENT naming `name` and the accepted ones if it is not one.
absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(const std::string& name);

// Makes "relibd" the default logger on stderr at `level`, in the journal
// format when stderr is the journal, and routes gRPC's log lines to it
// (escaped, with gRPC's file:line). Returns whether the journal format is on.
bool SetUpLogging(spdlog::level::level_enum level);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_LOG_SETUP_H_
