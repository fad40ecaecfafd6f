#include "daemon/log_setup.h"

#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/journal_log.h"
#include "common/log_text.h"
#include "fmt/format.h"
#include "grpc/support/log.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace {

void GrpcLog(gpr_log_func_args* args) {
  spdlog::level::level_enum level = spdlog::level::info;
  if (args->severity == GPR_LOG_SEVERITY_DEBUG) level = spdlog::level::debug;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) level = spdlog::level::err;
  const char* file = args->file ? std::strrchr(args->file, '/') : nullptr;
  file = file ? file + 1 : (args->file ? args->file : "?");
  spdlog::log(level, "grpc {}:{} {}", common::EscapeForLog(file, 200), args->line,
              common::EscapeForLog(args->message ? args->message : "", 4096));
}

}  // namespace

const std::vector<std::string>& LogLevelNames() {
  static const std::vector<std::string> names = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  return names;
}

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(const std::string& name) {
  for (const std::string& known : LogLevelNames()) {
    if (known == name) return spdlog::level::from_str(name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown log level '", common::EscapeForLog(name, 64),
                                                 "': use one of ", absl::StrJoin(LogLevelNames(), ", ")));
}

bool SetUpLogging(spdlog::level::level_enum level) {
  auto logger = spdlog::stderr_color_mt("relibd");
  bool journal = common::StderrIsJournal();
  if (journal) {
    common::UseJournalFormat(*logger);
  } else {
    logger->set_pattern(fmt::format("%Y-%m-%dT%H:%M:%S.%e %^%l%$ relibd[{}] %v", ::getpid()));
  }
  logger->set_level(level);
  spdlog::set_default_logger(logger);
  gpr_set_log_function(GrpcLog);
  // gRPC filters before the function sees a line. Its debug lines (dozens
  // at every start) only at trace, its info lines from debug on.
  gpr_set_log_verbosity(level <= spdlog::level::trace  ? GPR_LOG_SEVERITY_DEBUG
                        : level <= spdlog::level::debug ? GPR_LOG_SEVERITY_INFO
                                                        : GPR_LOG_SEVERITY_ERROR);
  return journal;
}

}  // namespace relib::daemon
