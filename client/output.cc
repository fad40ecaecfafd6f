#include "client/output.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace relib::client {
namespace {

std::string StateName(v1::ModuleState state) {
  switch (state) {
    case v1::MODULE_STATE_LOADING: return "loading";
    case v1::MODULE_STATE_LOADED: return "loaded";
    case v1::MODULE_STATE_FAILED: return "failed";
    default: return "unknown";
  }
}

std::string KindName(v1::EventKind kind) {
  switch (kind) {
    case v1::EVENT_KIND_LOADED: return "loaded";
    case v1::EVENT_KIND_RELOADED: return "reloaded";
    case v1::EVENT_KIND_UNLOADED: return "unloaded";
    case v1::EVENT_KIND_FAILED: return "failed";
    case v1::EVENT_KIND_WORKER_STARTED: return "worker-started";
    case v1::EVENT_KIND_WORKER_EXITED: return "worker-exited";
    default: return "unknown";
  }
}

}  // namespace

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string FormatModule(const v1::ModuleInfo& module) {
  std::string out = absl::StrFormat("module %s version %d (%s) in worker pid %d\n  path: %s\n  exports: %s\n",
                                    module.name(), module.version(), StateName(module.state()),
                                    module.worker_pid(), module.path(),
                                    module.exports().empty() ? "none" : absl::StrJoin(module.exports(), ", "));
  for (const auto& warning : module.warnings()) absl::StrAppend(&out, "  warning: ", warning, "\n");
  if (!module.last_error().empty()) absl::StrAppend(&out, "  last error: ", module.last_error(), "\n");
  return out;
}

std::string FormatReport(const v1::UnloadReport& report) {
  std::string out = absl::StrFormat("unload report: module %s version %d (%s)\n  unmapped: %s\n", report.name(),
                                    report.version(), report.path(), report.unmapped() ? "yes" : "NO");
  for (const auto& line : report.remaining_mappings()) absl::StrAppend(&out, "    still mapped: ", line, "\n");
  if (report.before_unload_missing()) {
    absl::StrAppend(&out, "  before_unload: none\n");
  } else if (!report.before_unload_error().empty()) {
    absl::StrAppend(&out, "  before_unload: FAILED (", report.before_unload_error(), "), unload forced\n");
  } else {
    absl::StrAppend(&out, "  before_unload: ok (", report.before_unload_micros(), " us)\n");
  }
  absl::StrAppend(&out, "  dlclose + checks: ", report.unload_micros(), " us\n");
  return out;
}

std::string FormatStatus(const v1::StatusResponse& status) {
  std::string out = absl::StrFormat("relibd pid %d, %d module(s), %d worker(s)\n", status.daemon_pid(),
                                    status.modules_size(), status.workers_size());
  if (status.modules_size() > 0) {
    absl::StrAppend(&out, absl::StrFormat("%-20s %-8s %-8s %-8s %-8s %s\n", "NAME", "VERSION", "STATE", "WORKER",
                                          "CALLS", "PATH"));
  }
  for (const auto& module : status.modules()) {
    absl::StrAppend(&out, absl::StrFormat("%-20s %-8d %-8s %-8d %-8d %s\n", module.name(), module.version(),
                                          StateName(module.state()), module.worker_pid(), module.stats().calls(),
                                          module.path()));
    for (const auto& warning : module.warnings()) absl::StrAppend(&out, "    warning: ", warning, "\n");
    if (!module.last_error().empty()) absl::StrAppend(&out, "    last error: ", module.last_error(), "\n");
  }
  return out;
}

std::string FormatEvent(const v1::Event& event) {
  std::string out = absl::StrCat("#", event.sequence(), " ", KindName(event.kind()));
  if (!event.module().empty()) absl::StrAppend(&out, " module=", event.module(), " version=", event.version());
  if (event.worker_pid() != 0) absl::StrAppend(&out, " worker=", event.worker_pid());
  if (!event.message().empty()) absl::StrAppend(&out, " ", event.message());
  if (event.has_report()) absl::StrAppend(&out, " unmapped=", event.report().unmapped() ? "yes" : "no");
  return out;
}

}  // namespace relib::client
