#include "client/output.h"

#include <time.h>

#include <ctime>

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
    case v1::MODULE_STATE_RESTARTING: return "restarting";
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
    case v1::EVENT_KIND_RESTARTED: return "restarted";
    case v1::EVENT_KIND_CONFIG: return "config";
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
  std::string out = absl::StrFormat("module %s version %d (%s) in worker '%s' pid %d\n  path: %s%s\n  exports: %s\n",
                                    module.name(), module.version(), StateName(module.state()), module.worker(),
                                    module.worker_pid(), module.path(), module.watch() ? " (watched)" : "",
                                    module.exports().empty() ? "none" : absl::StrJoin(module.exports(), ", "));
  for (const auto& warning : module.warnings()) absl::StrAppend(&out, "  warning: ", warning, "\n");
  if (!module.last_error().empty()) absl::StrAppend(&out, "  last error: ", module.last_error(), "\n");
  if (module.recent_crashes() > 0) absl::StrAppend(&out, "  recent crashes: ", module.recent_crashes(), "\n");
  return out;
}

std::string FormatReport(const v1::UnloadReport& report) {
  std::string out = absl::StrFormat("unload report: module %s version %d (%s)\n", report.name(), report.version(),
                                    report.path());
  if (report.refused()) {
    absl::StrAppend(&out, "  REFUSED: ", report.live_threads_size(),
                    " module thread(s) still running; the version keeps running\n");
  } else {
    absl::StrAppend(&out, "  unmapped: ", report.unmapped() ? "yes" : "NO", "\n");
    for (const auto& reason : report.pin_reasons()) absl::StrAppend(&out, "    why: ", reason, "\n");
    for (const auto& line : report.remaining_mappings()) absl::StrAppend(&out, "    still mapped: ", line, "\n");
  }
  for (const auto& thread : report.live_threads()) {
    absl::StrAppend(&out, "  live thread: tid ", thread.tid(), " '", thread.name(), "' ", thread.start_routine(), "\n");
  }
  if (report.before_unload_missing()) {
    absl::StrAppend(&out, "  before_unload: none\n");
  } else if (!report.before_unload_error().empty()) {
    absl::StrAppend(&out, "  before_unload: FAILED (", report.before_unload_error(), ")\n");
  } else {
    absl::StrAppend(&out, "  before_unload: ok (", report.before_unload_micros(), " us)\n");
  }
  if (report.refused()) return out;
  const v1::HeapReport& heap = report.heap();
  if (!heap.tracking_enabled()) {
    absl::StrAppend(&out, "  heap: not tracked in this build\n");
  } else if (heap.leaked_blocks() == 0) {
    absl::StrAppend(&out, "  heap: no leaks\n");
  } else {
    absl::StrAppend(&out, "  heap: leaked ", heap.leaked_bytes(), " bytes in ", heap.leaked_blocks(), " block(s)",
                    heap.freed() ? ", freed" : ", left allocated", "\n");
    for (const auto& site : heap.top_sites()) {
      absl::StrAppend(&out, "    ", site.bytes(), " bytes in ", site.blocks(), " block(s) at ", site.location(), "\n");
    }
  }
  const v1::TlsReport& tls = report.tls();
  if (tls.destructors_run() + tls.destructors_discarded() > 0) {
    absl::StrAppend(&out, "  thread_local destructors: ", tls.destructors_run(), " run on the unloading thread",
                    tls.destructors_discarded() > 0 ? absl::StrCat(", ", tls.destructors_discarded(),
                                                                  " discarded (other threads)")
                                                    : "",
                    "\n");
  }
  if (report.open_fds_size() > 0) {
    absl::StrAppend(&out, "  fds left open: ", report.open_fds_size(), report.fds_closed() ? " (closed)" : "", "\n");
    for (const auto& fd : report.open_fds()) {
      absl::StrAppend(&out, "    fd ", fd.fd(), " ", fd.kind(), " ", fd.description(), "\n");
    }
  }
  if (report.children_size() > 0) {
    absl::StrAppend(&out, "  child processes left running: ", report.children_size(),
                    report.children_killed() ? " (killed)" : "", "\n");
    for (const auto& child : report.children()) {
      bool own = child.parent_pid() == report.worker_pid();
      absl::StrAppend(&out, "    pid ", child.pid(), own ? "" : absl::StrCat(" (child of ", child.parent_pid(), ")"), ": ",
                      child.command_line(), "\n");
    }
  }
  if (report.pthread_keys_deleted() > 0) {
    absl::StrAppend(&out, "  pthread keys deleted: ", report.pthread_keys_deleted(), "\n");
  }
  if (report.mappings_size() > 0) {
    absl::StrAppend(&out, "  mappings left: ", report.mappings_size(),
                    report.mappings_unmapped() ? " (unmapped)"
                                               : " (views of module files unmapped, the others kept)",
                    "\n");
    for (const auto& m : report.mappings()) {
      absl::StrAppend(&out, absl::StrFormat("    0x%x, %d bytes, %s\n", m.address(), m.length(),
                                            m.path().empty() ? "anonymous" : m.path()));
    }
  }
  if (report.code_references_size() > 0) {
    absl::StrAppend(&out, "  paths back into its code: ", report.code_references_size(), "\n");
    for (const auto& ref : report.code_references()) {
      absl::StrAppend(&out, "    ", ref.kind(), " ", ref.description(), " (", ref.action(), ")\n");
    }
  }
  if (report.libraries_size() > 0) {
    absl::StrAppend(&out, "  dlopen'ed libraries left open: ", report.libraries_size(),
                    report.libraries_closed() ? " (closed)" : "", "\n");
    for (const auto& library : report.libraries()) {
      absl::StrAppend(&out, "    ", library.path(), " (", library.references(), " reference(s))\n");
    }
  }
  absl::StrAppend(&out, "  checks + dlclose: ", report.unload_micros(), " us\n");
  return out;
}

std::string FormatStatus(const v1::StatusResponse& status) {
  std::string out = absl::StrFormat("relibd pid %d, %d module(s), %d worker(s)\n", status.daemon_pid(),
                                    status.modules_size(), status.workers_size());
  for (const auto& worker : status.workers()) {
    absl::StrAppend(&out, absl::StrFormat("  worker '%s' pid %d: %s\n", worker.name(), worker.pid(),
                                          absl::StrJoin(worker.modules(), ", ")));
  }
  if (status.modules_size() > 0) {
    absl::StrAppend(&out, absl::StrFormat("%-16s %-7s %-7s %-7s %-6s %-10s %-7s %-7s %-4s %-6s %s\n", "NAME",
                                          "VERSION", "STATE", "WORKER", "CALLS", "HEAP", "BLOCKS", "THREADS", "FDS",
                                          "SOURCE", "PATH"));
  }
  for (const auto& module : status.modules()) {
    const v1::ModuleStats& stats = module.stats();
    absl::StrAppend(&out, absl::StrFormat("%-16s %-7d %-7s %-7d %-6d %-10d %-7d %-7d %-4d %-6s %s\n", module.name(),
                                          module.version(), StateName(module.state()), module.worker_pid(),
                                          stats.calls(), stats.heap_bytes(), stats.heap_blocks(), stats.threads(),
                                          stats.open_fds(),
                                          module.source() == v1::MODULE_SOURCE_CONFIG ? "config" : "api",
                                          module.path()));
    for (const auto& warning : module.warnings()) absl::StrAppend(&out, "    warning: ", warning, "\n");
    if (!module.last_error().empty()) absl::StrAppend(&out, "    last error: ", module.last_error(), "\n");
  }
  return out;
}

std::string FormatConfigReload(const v1::ReloadConfigResponse& response) {
  std::string out = absl::StrCat("config ", response.file(), " applied\n");
  for (const auto& outcome : response.modules()) {
    std::string change;
    switch (outcome.change()) {
      case v1::CONFIG_CHANGE_ADDED: change = "added"; break;
      case v1::CONFIG_CHANGE_REMOVED: change = "removed"; break;
      case v1::CONFIG_CHANGE_CHANGED: change = "changed"; break;
      case v1::CONFIG_CHANGE_UNCHANGED: change = "unchanged"; break;
      case v1::CONFIG_CHANGE_FAILED: change = "failed"; break;
      default: change = "unknown"; break;
    }
    absl::StrAppend(&out, absl::StrFormat("  %-9s %-16s", change, outcome.module()));
    if (outcome.info().version() > 0) {
      absl::StrAppend(&out, absl::StrFormat(" version %d pid %d", outcome.info().version(),
                                            outcome.info().worker_pid()));
    }
    if (!outcome.message().empty()) absl::StrAppend(&out, " ", outcome.message());
    absl::StrAppend(&out, "\n");
  }
  for (const auto& line : response.restart_needed()) absl::StrAppend(&out, "  restart needed: ", line, "\n");
  return out;
}

std::string FormatTimestamp(int64_t unix_ms) {
  time_t seconds = static_cast<time_t>(unix_ms / 1000);
  struct tm local;
  if (::localtime_r(&seconds, &local) == nullptr) return absl::StrCat(unix_ms);
  char text[32];
  size_t n = std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &local);
  return absl::StrFormat("%s.%03d", std::string_view(text, n), static_cast<int>(unix_ms % 1000));
}

std::string FormatEvent(const v1::Event& event) {
  std::string out =
      absl::StrCat(FormatTimestamp(event.unix_ms()), " #", event.sequence(), " ", KindName(event.kind()));
  if (!event.module().empty()) absl::StrAppend(&out, " module=", event.module(), " version=", event.version());
  if (!event.cause().empty()) absl::StrAppend(&out, " cause=", event.cause());
  if (event.worker_pid() != 0) absl::StrAppend(&out, " worker=", event.worker_pid());
  if (!event.message().empty()) absl::StrAppend(&out, " ", event.message());
  if (event.has_report()) absl::StrAppend(&out, " unmapped=", event.report().unmapped() ? "yes" : "no");
  return out;
}

}  // namespace relib::client
