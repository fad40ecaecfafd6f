// Fuzz target: request validation and relibd's own input parsers — a LoadRequest
// and a CallRequest parsed from the input, their names and paths validated as
// the Supervisor does, the path checked against allowed module directories,
// and the input (split at newlines) as --worker-limit and --socket-mode-like
// flag values and group/user names.
#include <cstddef>
#include <cstdint>
#include <string>

#include "google/protobuf/stubs/logging.h"

#include "daemon/access.h"
#include "daemon/module_dirs.h"
#include "daemon/request_validation.h"
#include "daemon/worker_limits.h"
#include "relib/v1/relibd.pb.h"

namespace {
// Invalid UTF-8 in string fields is expected input; protobuf's log of each is noise.
const bool kQuietProtobuf = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;
  const std::string input(reinterpret_cast<const char*>(data), size);
  static const auto dirs = relib::daemon::ModuleDirs::Create({"/usr/lib"}, 0);
  relib::v1::LoadRequest load;
  if (load.ParseFromString(input)) {
    (void)relib::daemon::ValidateName(load.name(), "module");
    (void)relib::daemon::ValidateName(load.worker(), "worker");
    if (relib::daemon::ValidatePath(load.path()).ok() && dirs.ok()) (void)dirs->Check(load.path());
  }
  relib::v1::CallRequest call;
  if (call.ParseFromString(input)) (void)relib::daemon::ValidateName(call.name(), "module");
  relib::daemon::WorkerLimitTable limits;
  size_t start = 0;
  while (start <= input.size()) {
    size_t end = input.find('\n', start);
    if (end == std::string::npos) end = input.size();
    std::string line = input.substr(start, end - start);
    (void)limits.Add(line);
    (void)relib::daemon::ValidateName(line, "module");
    (void)relib::daemon::ValidatePath(line);
    start = end + 1;
  }
  for (const char* group : {"default", "big", "*"}) {
    relib::daemon::WorkerLimits l = limits.For(group);
    (void)l.ToRlimits();
  }
  return 0;
}
