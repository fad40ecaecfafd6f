#include "client/commands.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <memory>

#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "relib/module.h"
#include "client/output.h"
#include "common/api_metadata.h"
#include "common/message_limits.h"
#include "grpcpp/grpcpp.h"
#include "relib/v1/relibd.grpc.pb.h"

namespace relib::client {
namespace {

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    default: return "ERROR";
  }
}

// Connects or explains why not. Null means the caller should exit with
// `*exit_code`: kExitPermissionDenied when the socket refuses this user,
// kExitUnreachable otherwise.
std::unique_ptr<v1::Relibd::Stub> Connect(const ClientOptions& options, int* exit_code) {
  grpc::ChannelArguments arguments;
  const auto max_message_bytes = static_cast<int>(common::MegabytesToBytes(options.max_message_mb));
  arguments.SetMaxReceiveMessageSize(max_message_bytes);
  arguments.SetMaxSendMessageSize(max_message_bytes);
  auto channel =
      grpc::CreateCustomChannel("unix:" + options.socket, grpc::InsecureChannelCredentials(), arguments);
  auto wait = std::chrono::milliseconds(options.connect_timeout_ms);
  if (options.timeout_s > 0) wait = std::min(wait, std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000)));
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + wait)) {
    // gRPC does not say why; the socket file's permissions are the usual
    // reason, and a plain connect tells.
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", options.socket.c_str());
    bool denied = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
                  (errno == EACCES || errno == EPERM);
    if (probe >= 0) ::close(probe);
    if (denied) {
      *exit_code = PrintError(options,
                              absl::StrCat("permission denied (uid ", ::getuid(), " cannot connect to ", options.socket,
                                           ": ask for membership of the socket's group or a relibd "
                                           "--view-group/--control-group)"),
                              "PERMISSION_DENIED", kExitPermissionDenied);
      return nullptr;
    }
    *exit_code = PrintError(options,
                            absl::StrCat("cannot reach relibd at ", options.socket,
                                         " (is it running? start relibd or pass --socket)"),
                            "UNAVAILABLE", kExitUnreachable);
    return nullptr;
  }
  return v1::Relibd::NewStub(channel);
}

// Every RPC's context: carries the --timeout deadline.
void Prepare(const ClientOptions& options, grpc::ClientContext& context) {
  if (options.timeout_s > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(options.timeout_s * 1e6)));
  }
}

int Fail(const ClientOptions& options, const std::string& what, const grpc::Status& status) {
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && options.timeout_s > 0) {
    message = absl::StrCat("no answer within --timeout ", options.timeout_s,
                           " s (relibd may still finish the operation)");
  }
  return PrintError(options, absl::StrCat(what, ": ", message), CodeName(status.error_code()),
                    status.error_code() == grpc::StatusCode::PERMISSION_DENIED ? kExitPermissionDenied
                                                                               : kExitModuleError);
}

// A refused or partial unload's report, if the daemon attached one. A report
// cut to fit the trailing metadata is fetched whole from Status.
int FailWithReport(const ClientOptions& options, v1::Relibd::Stub& stub, const std::string& what,
                   const grpc::ClientContext& context, const grpc::Status& status) {
  int rc = Fail(options, what, status);
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(common::kUnloadReportMetadataKey);
  v1::UnloadReport report;
  if (it != trailers.end() && report.ParseFromString(std::string(it->second.data(), it->second.size()))) {
    if (report.truncated()) {
      v1::StatusRequest request;
      request.set_with_reports(true);
      v1::StatusResponse full;
      grpc::ClientContext status_context;
      Prepare(options, status_context);
      if (stub.Status(&status_context, request, &full).ok()) {
        for (const auto& module : full.modules()) {
          if (module.name() == report.name() && module.has_last_failure_report()) report = module.last_failure_report();
        }
      }
    }
    if (options.json) {
      std::cout << ToJson(report) << "\n";
    } else {
      std::cerr << FormatReport(report);
    }
  }
  return rc;
}

v1::ModuleOptions ToProto(const ModuleFlags& flags) {
  v1::ModuleOptions options;
  options.set_thread_grace_ms(flags.thread_grace_ms);
  options.set_leak_policy(flags.leak_policy == "free" ? v1::LEAK_POLICY_FREE : v1::LEAK_POLICY_REPORT);
  options.set_fd_policy(flags.fd_policy == "close" ? v1::FD_POLICY_CLOSE : v1::FD_POLICY_REPORT);
  options.set_child_policy(flags.child_policy == "kill" ? v1::CHILD_POLICY_KILL : v1::CHILD_POLICY_REPORT);
  options.set_mapping_policy(flags.mapping_policy == "unmap" ? v1::MAPPING_POLICY_UNMAP : v1::MAPPING_POLICY_REPORT);
  options.set_signal_policy(flags.signal_policy == "refuse" ? v1::SIGNAL_POLICY_REFUSE : v1::SIGNAL_POLICY_RESTORE);
  options.set_dlopen_policy(flags.dlopen_policy == "close" ? v1::DLOPEN_POLICY_CLOSE : v1::DLOPEN_POLICY_REPORT);
  options.set_capture_sites(flags.capture_sites);
  options.set_load_deadline_ms(flags.load_deadline_ms);
  options.set_on_load_deadline_ms(flags.on_load_deadline_ms);
  options.set_call_deadline_ms(flags.call_deadline_ms);
  options.set_before_unload_deadline_ms(flags.before_unload_deadline_ms);
  options.set_unload_deadline_ms(flags.unload_deadline_ms);
  options.set_max_concurrent_calls(flags.max_concurrent_calls);
  options.set_max_queued_calls(flags.max_queued_calls);
  options.set_queue_deadline_ms(flags.queue_deadline_ms);
  return options;
}

std::string AbsolutePath(const std::string& path) {
  if (path.empty()) return path;
  std::error_code error;
  auto absolute = std::filesystem::absolute(path, error);
  return error ? path : absolute.lexically_normal().string();
}

template <typename Message>
void Print(const ClientOptions& options, const Message& message, const std::string& text) {
  if (options.json) {
    std::cout << ToJson(message) << "\n";
  } else {
    std::cout << text;
  }
}

}  // namespace

// An error as relibctl prints it: one line on stderr, or under --json one
// object {"error": text, "code": gRPC code name, "exit_code": n} on stderr.
int PrintError(const ClientOptions& options, const std::string& text, const std::string& code, int exit_code) {
  if (options.json) {
    google::protobuf::Struct error;
    auto& fields = *error.mutable_fields();
    fields["error"].set_string_value(text);
    fields["code"].set_string_value(code);
    fields["exit_code"].set_number_value(exit_code);
    std::cerr << ToJson(error) << "\n";
  } else {
    std::cerr << "relibctl: " << text;
    if (!code.empty() && (exit_code == kExitModuleError || exit_code == kExitPermissionDenied)) {
      std::cerr << " [" << code << "]";
    }
    std::cerr << "\n";
  }
  return exit_code;
}

int RunLoad(const ClientOptions& options, const std::string& name, const std::string& path,
            const ModuleFlags& flags, const std::string& worker, bool watch) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::LoadRequest request;
  request.set_name(name);
  request.set_path(AbsolutePath(path));
  *request.mutable_options() = ToProto(flags);
  request.set_worker(worker);
  request.set_watch(watch);
  v1::LoadResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub->Load(&context, request, &response);
  if (!status.ok()) return Fail(options, "load " + name, status);
  Print(options, response, FormatModule(response.module()));
  return kExitOk;
}

namespace {

// One Reload request; prints its result or its error (with the report).
int ReloadOne(const ClientOptions& options, v1::Relibd::Stub& stub, const std::string& name, const std::string& path,
              bool force, bool staged, const ModuleFlags& flags) {
  v1::ReloadRequest request;
  request.set_name(name);
  request.set_path(AbsolutePath(path));
  request.set_force(force);
  request.set_staged(staged);
  if (flags.set) *request.mutable_options() = ToProto(flags);
  v1::ReloadResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub.Reload(&context, request, &response);
  if (!status.ok()) return FailWithReport(options, stub, "reload " + name, context, status);
  std::string text = absl::StrCat("reloaded ", FormatModule(response.module()));
  if (response.swap_pause_micros() > 0) {
    absl::StrAppend(&text, "  swap pause: ", response.swap_pause_micros(), " us (calls of the module held, not failed)\n");
  }
  if (response.has_report()) absl::StrAppend(&text, FormatReport(response.report()));
  Print(options, response, text);
  return kExitOk;
}

}  // namespace

int RunReload(const ClientOptions& options, const std::string& name, const std::string& path, bool force,
              bool staged, const ModuleFlags& flags) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  return ReloadOne(options, *stub, name, path, force, staged, flags);
}

int RunReloadAll(const ClientOptions& options, bool force, bool staged, const ModuleFlags& flags) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::StatusResponse modules;
  {
    grpc::ClientContext context;
    Prepare(options, context);
    grpc::Status status = stub->Status(&context, v1::StatusRequest(), &modules);
    if (!status.ok()) return Fail(options, "status", status);
  }
  // One module's failure does not stop the others; the exit code says whether any failed.
  int rc = kExitOk;
  for (const auto& module : modules.modules()) {
    if (int one = ReloadOne(options, *stub, module.name(), "", force, staged, flags); one != kExitOk) rc = one;
  }
  return rc;
}

int RunWatch(const ClientOptions& options, const std::string& name, bool off) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::WatchRequest request;
  request.set_name(name);
  request.set_off(off);
  v1::WatchResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub->Watch(&context, request, &response);
  if (!status.ok()) return Fail(options, "watch " + name, status);
  Print(options, response, FormatModule(response.module()));
  return kExitOk;
}

int RunVersion(const ClientOptions& options) {
  google::protobuf::Struct versions;
  auto& fields = *versions.mutable_fields();
  fields["relibctl"].set_string_value(RELIB_VERSION);
  fields["module_abi"].set_number_value(RELIB_ABI_VERSION);
  std::string text = absl::StrCat("relibctl ", RELIB_VERSION, "\nmodule ABI ", RELIB_ABI_VERSION, " (relib/module.h)\n");
  int rc = kExitUnreachable;
  auto stub = Connect(options, &rc);
  if (stub) {
    v1::StatusResponse status;
    grpc::ClientContext context;
    Prepare(options, context);
    grpc::Status answer = stub->Status(&context, v1::StatusRequest(), &status);
    if (answer.ok()) {
      fields["relibd"].set_string_value(status.daemon_version());
      fields["relibd_pid"].set_number_value(status.daemon_pid());
      fields["relibd_abi"].set_number_value(status.abi_version());
      absl::StrAppend(&text, "relibd ", status.daemon_version(), " (pid ", status.daemon_pid(),
                      ", accepts module ABI ", status.abi_version(), ")\n");
      rc = kExitOk;
    } else {
      rc = Fail(options, "version", answer);
    }
  }
  if (options.json) {
    std::cout << ToJson(versions) << "\n";
  } else {
    std::cout << text;
  }
  return rc;
}

int RunUnload(const ClientOptions& options, const std::string& name, bool force) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::UnloadRequest request;
  request.set_name(name);
  request.set_force(force);
  v1::UnloadResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub->Unload(&context, request, &response);
  if (!status.ok()) return FailWithReport(options, *stub, "unload " + name, context, status);
  Print(options, response, FormatReport(response.report()));
  return kExitOk;
}

int RunCall(const ClientOptions& options, const std::string& name, const std::string& export_name,
            const std::string& input) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::CallRequest request;
  request.set_name(name);
  request.set_export_name(export_name);
  if (input == "-") {
    request.set_input(std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()));
  } else {
    request.set_input(input);
  }
  v1::CallResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub->Call(&context, request, &response);
  if (!status.ok()) return Fail(options, "call " + name + " " + export_name, status);
  if (options.json) {
    std::cout << ToJson(response) << "\n";
  } else {
    std::cout << response.output();
    if (::isatty(STDOUT_FILENO) && !response.output().empty() && response.output().back() != '\n') {
      std::cout << "\n";
    }
  }
  return kExitOk;
}

int RunStatus(const ClientOptions& options) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::StatusResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub->Status(&context, v1::StatusRequest(), &response);
  if (!status.ok()) return Fail(options, "status", status);
  Print(options, response, FormatStatus(response));
  return kExitOk;
}

int RunReloadConfig(const ClientOptions& options) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  v1::ReloadConfigResponse response;
  grpc::ClientContext context;
  Prepare(options, context);
  grpc::Status status = stub->ReloadConfig(&context, v1::ReloadConfigRequest(), &response);
  if (!status.ok()) return Fail(options, "reload-config", status);
  Print(options, response, FormatConfigReload(response));
  for (const auto& outcome : response.modules()) {
    if (outcome.change() == v1::CONFIG_CHANGE_FAILED) return kExitModuleError;
  }
  return kExitOk;
}

int RunEvents(const ClientOptions& options, int count) {
  int unreachable = kExitUnreachable;
  auto stub = Connect(options, &unreachable);
  if (!stub) return unreachable;
  grpc::ClientContext context;
  Prepare(options, context);
  auto reader = stub->Events(&context, v1::EventsRequest());
  v1::Event event;
  int seen = 0;
  while ((count <= 0 || seen < count) && reader->Read(&event)) {
    std::cout << (options.json ? ToJson(event) : FormatEvent(event)) << std::endl;
    ++seen;
  }
  if (count > 0 && seen == count) {
    context.TryCancel();
    return kExitOk;
  }
  grpc::Status status = reader->Finish();
  // --timeout bounds how long events are followed: reaching it is the normal end.
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && options.timeout_s > 0) return kExitOk;
  if (!status.ok()) return Fail(options, "events", status);
  return kExitOk;
}

}  // namespace relib::client
