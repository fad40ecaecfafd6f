// The benchmarks that span processes: a real relibd with real workers driven
// through the generated gRPC stubs, each figure beside a baseline measured in
// the same run (a bare gRPC echo server, copy + dlopen + dlsym + dlclose of
// the same files, fork + exec of relib-worker). Writes one JSON document of
// figures; scripts/bench merges it with the Google Benchmark results.
//
// Usage: relib_bench_harness [--scale smoke|quick|full] [--out FILE] [--only calls,throughput,reloads,rpc,fds,idle,swap,crash,reload-loop,call-loop]
// RELIB_BENCH_VERBOSE=1 prints every crash → serving sample.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "bench/bench_paths.h"
#include "bench/reload_baseline.h"
#include "common/child_process.h"
#include "common/message_limits.h"
#include "common/temp_dir.h"
#include "common/unique_fd.h"
#include "grpcpp/grpcpp.h"
#include "relib/bench/echo.grpc.pb.h"
#include "relib/module.h"
#include "relib/v1/relibd.grpc.pb.h"

namespace relib::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MicrosBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  size_t index = static_cast<size_t>(p * static_cast<double>(samples.size() - 1) + 0.5);
  return samples[std::min(index, samples.size() - 1)];
}
double P50(const std::vector<double>& samples) { return Percentile(samples, 0.5); }

// How many iterations each figure gets.
struct Scale {
  std::string name;
  int call_32b, call_64k, call_1m;
  double throughput_s;
  int reloads_small, reloads_big;
  int drift_reloads;
  int crashes;
  int fd_calls;
  double idle_s;
  double swap_s;
  int spawns;
};

Scale ScaleNamed(const std::string& name) {
  if (name == "smoke") return {name, 20, 5, 3, 0.2, 5, 3, 10, 1, 20, 0.3, 0.3, 2};
  if (name == "quick") return {name, 1000, 300, 60, 1.0, 100, 40, 500, 4, 500, 2.0, 1.0, 10};
  return {name, 4000, 1000, 200, 3.0, 400, 100, 10000, 12, 2000, 5.0, 3.0, 30};
}

// One row of the table.
struct Figure {
  std::string key;
  std::string figure;
  std::string unit;
  double value = 0;
  std::optional<double> baseline;
  std::string baseline_label;
  // "ratio<=X", "ratio>=X", "value<=X" or "" (no target).
  std::string target;
  std::string note;
};

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

std::string ToJson(const std::vector<Figure>& figures, const std::string& scale) {
  std::string out = absl::StrCat("{\"scale\": \"", scale, "\", \"figures\": [\n");
  for (size_t i = 0; i < figures.size(); ++i) {
    const Figure& f = figures[i];
    absl::StrAppend(&out, "  {\"key\": \"", JsonEscape(f.key), "\", \"figure\": \"", JsonEscape(f.figure),
                    "\", \"unit\": \"", JsonEscape(f.unit), "\", \"value\": ", absl::StrFormat("%.6g", f.value),
                    ", \"baseline\": ", f.baseline ? absl::StrFormat("%.6g", *f.baseline) : "null",
                    ", \"baseline_label\": \"", JsonEscape(f.baseline_label), "\", \"target\": \"",
                    JsonEscape(f.target), "\", \"note\": \"", JsonEscape(f.note), "\"}",
                    i + 1 < figures.size() ? ",\n" : "\n");
  }
  out += "]}\n";
  return out;
}

void Progress(const std::string& text) { std::cerr << "bench: " << text << std::endl; }

bool WaitForSocket(const std::string& path, common::ChildProcess& process) {
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (!std::filesystem::exists(path) && Clock::now() < deadline) {
    auto exited = process.TryReap();
    if (exited.ok() && exited->has_value()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return std::filesystem::exists(path);
}

std::shared_ptr<grpc::Channel> Connect(const std::string& socket, bool own_connection) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(common::kDefaultMaxMessageMb << 20);
  args.SetMaxSendMessageSize(common::kDefaultMaxMessageMb << 20);
  // Each client thread of the throughput figures gets its own connection,
  // like separate client processes would.
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args);
  channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return channel;
}

// A process serving on a Unix socket in a private directory: relibd or the
// bare echo server. SIGTERM and reaped on destruction.
class Server {
 public:
  static std::unique_ptr<Server> Start(const std::string& prefix,
                                       const std::function<std::vector<std::string>(const std::string& dir,
                                                                                    const std::string& socket)>& argv) {
    auto dir = common::TempDir::Create("/tmp", prefix);
    if (!dir.ok()) throw std::runtime_error(dir.status().ToString());
    std::string socket = dir->path() + "/sock";
    std::string log = dir->path() + "/log";
    common::UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    common::UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    common::SpawnOptions options;
    options.argv = argv(dir->path(), socket);
    options.fds = {{null_fd.get(), 0}, {log_fd.get(), 1}, {log_fd.get(), 2}};
    auto process = common::ChildProcess::Spawn(options);
    if (!process.ok()) throw std::runtime_error(process.status().ToString());
    std::unique_ptr<Server> server(new Server(std::move(dir).value(), std::move(process).value(), socket));
    if (!WaitForSocket(socket, server->process_)) {
      throw std::runtime_error(absl::StrCat(options.argv[0], " did not start: ", server->Log()));
    }
    server->channel_ = Connect(socket, false);
    return server;
  }
  ~Server() {
    ::kill(process_.pid(), SIGTERM);
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      auto exited = process_.TryReap();
      if (!exited.ok() || exited->has_value()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  std::string Log() const {
    std::ifstream in(dir_.path() + "/log");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  const std::string& socket() const { return socket_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  pid_t pid() const { return process_.pid(); }

 private:
  Server(common::TempDir dir, common::ChildProcess process, std::string socket)
      : dir_(std::move(dir)), process_(std::move(process)), socket_(std::move(socket)) {}
  common::TempDir dir_;
  common::ChildProcess process_;
  std::string socket_;
  std::shared_ptr<grpc::Channel> channel_;
};

std::unique_ptr<Server> StartRelibd(const std::vector<std::string>& extra = {}) {
  return Server::Start("relib-bench-", [&](const std::string& dir, const std::string& socket) {
    // For comparing two builds in one sitting (profiling only): other binaries.
    const char* relibd = std::getenv("RELIB_BENCH_RELIBD");
    const char* worker = std::getenv("RELIB_BENCH_WORKER");
    std::vector<std::string> argv = {relibd != nullptr ? relibd : kRelibdPath,
                                     "--socket",
                                     socket,
                                     "--run-dir",
                                     dir,
                                     "--worker",
                                     worker != nullptr ? worker : kWorkerPath,
                                     "--log-level",
                                     "warn"};
    // relibd as root loads only from allowed directories: the bench modules' and this run's own.
    argv.insert(argv.end(), {"--allow-module-dir", std::filesystem::path(kBenchEchoV1).parent_path().string(),
                             "--allow-module-dir", dir});
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  });
}

// `from_fd`: the echo server accepts itself and hands connections to gRPC
// by fd, with gRPC's poll engine, as relibd does (bench/echo_server.cc).
std::unique_ptr<Server> StartEchoServer(bool from_fd = false) {
  return Server::Start("relib-bench-echo-", [from_fd](const std::string&, const std::string& socket) {
    if (from_fd) return std::vector<std::string>{kEchoServerPath, "--from-fd", socket};
    return std::vector<std::string>{kEchoServerPath, socket};
  });
}

// The floor baseline: the bare echo server plus one round trip to a child
// process (bench/forward_server.cc).
// `bdp_off`: HTTP/2 BDP probing off, as relibd's servers run (for idle
// wake-ups, see BuildServer in daemon/relibd_main.cc). With it off, gRPC 1.51
// keeps the connection's receive window at 64 KiB (GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES
// raises only the stream's), so a request over 64 KiB waits for the server's
// WINDOW_UPDATE: one more round trip with the client.
// `from_fd`: served the way relibd serves (it accepts itself and hands each
// connection to grpc::AddInsecureChannelFromFd, gRPC's poll engine): what
// relibd needs to read every client's SO_PEERCRED, which gRPC 1.51 does not
// give a handler.
std::unique_ptr<Server> StartForwardServer(bool bdp_off = false, bool from_fd = false) {
  return Server::Start("relib-bench-forward-", [bdp_off, from_fd](const std::string&, const std::string& socket) {
    std::vector<std::string> argv = {kForwardServerPath};
    if (from_fd) argv.push_back("--from-fd");
    if (bdp_off) argv.push_back("--bdp-off");
    argv.push_back(socket);
    return argv;
  });
}

std::unique_ptr<Server> StartEchoServerBdpOff() {
  return Server::Start("relib-bench-echo-", [](const std::string&, const std::string& socket) {
    return std::vector<std::string>{kEchoServerPath, "--bdp-off", socket};
  });
}

// A Call to relibd or to the bare echo server, behind one signature.
using CallFn = std::function<grpc::Status(const v1::CallRequest&, v1::CallResponse*)>;

CallFn RelibdCaller(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = std::shared_ptr<v1::Relibd::Stub>(v1::Relibd::NewStub(channel));
  return [stub](const v1::CallRequest& request, v1::CallResponse* response) {
    grpc::ClientContext context;
    return stub->Call(&context, request, response);
  };
}

CallFn EchoCaller(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = std::shared_ptr<BareEcho::Stub>(BareEcho::NewStub(channel));
  return [stub](const v1::CallRequest& request, v1::CallResponse* response) {
    grpc::ClientContext context;
    return stub->Call(&context, request, response);
  };
}

v1::CallRequest EchoRequest(const std::string& module, size_t bytes) {
  v1::CallRequest request;
  request.set_name(module);
  request.set_export_name("echo");
  request.set_input(std::string(bytes, 'x'));
  return request;
}

// Latency of `n` calls (after a few unmeasured ones), in µs.
std::vector<double> CallLatencies(const CallFn& call, const v1::CallRequest& request, int n) {
  v1::CallResponse response;
  for (int i = 0; i < std::min(n, 20); ++i) call(request, &response);
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    auto start = Clock::now();
    grpc::Status status = call(request, &response);
    samples.push_back(MicrosBetween(start, Clock::now()));
    if (!status.ok()) throw std::runtime_error("call failed: " + status.error_message());
    if (response.output().size() != request.input().size()) throw std::runtime_error("echo returned other bytes");
  }
  return samples;
}

struct Throughput {
  double calls_per_s = 0;
  int64_t errors = 0;
  std::vector<double> latencies;  // every call's, µs
};

// `threads` clients, each on its own connection, calling for `seconds`.
Throughput MeasureThroughput(const std::string& socket, bool relibd, const std::string& module, int threads,
                             double seconds) {
  std::vector<CallFn> callers;
  for (int i = 0; i < threads; ++i) {
    auto channel = Connect(socket, true);
    callers.push_back(relibd ? RelibdCaller(channel) : EchoCaller(channel));
  }
  std::atomic<bool> stop{false};
  std::vector<int64_t> counts(static_cast<size_t>(threads)), errors(static_cast<size_t>(threads));
  std::vector<std::vector<double>> latencies(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  const v1::CallRequest request = EchoRequest(module, 32);
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      v1::CallResponse response;
      while (!stop.load(std::memory_order_relaxed)) {
        auto start = Clock::now();
        grpc::Status status = callers[static_cast<size_t>(i)](request, &response);
        latencies[static_cast<size_t>(i)].push_back(MicrosBetween(start, Clock::now()));
        ++counts[static_cast<size_t>(i)];
        if (!status.ok()) ++errors[static_cast<size_t>(i)];
      }
    });
  }
  auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& worker : workers) worker.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  Throughput result;
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    total += counts[i];
    result.errors += errors[i];
    result.latencies.insert(result.latencies.end(), latencies[i].begin(), latencies[i].end());
  }
  result.calls_per_s = static_cast<double>(total) / elapsed;
  return result;
}

v1::ModuleInfo LoadModule(v1::Relibd::Stub& stub, const std::string& name, const std::string& path,
                          const std::string& group) {
  v1::LoadRequest request;
  request.set_name(name);
  request.set_path(path);
  request.set_worker(group);
  v1::LoadResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub.Load(&context, request, &response);
  if (!status.ok()) throw std::runtime_error(absl::StrCat("load of ", path, " failed: ", status.error_message()));
  return response.module();
}

std::string CallText(v1::Relibd::Stub& stub, const std::string& module, const std::string& export_name,
                     const std::string& input) {
  v1::CallRequest request;
  request.set_name(module);
  request.set_export_name(export_name);
  request.set_input(input);
  v1::CallResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub.Call(&context, request, &response);
  if (!status.ok()) throw std::runtime_error(absl::StrCat(module, ".", export_name, ": ", status.error_message()));
  return response.output();
}

// The swap pause a ReloadResponse reports, once the concurrency work adds it:
// any integer field whose name mentions "swap" or "pause", found by reflection.
std::optional<double> SwapPauseMicros(const v1::ReloadResponse& response) {
  const google::protobuf::Descriptor* descriptor = response.GetDescriptor();
  const google::protobuf::Reflection* reflection = response.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = descriptor->field(i);
    if (field->is_repeated()) continue;
    if (field->name().find("swap") == std::string::npos && field->name().find("pause") == std::string::npos) continue;
    double scale = field->name().find("_ms") != std::string::npos ? 1000.0 : 1.0;
    switch (field->cpp_type()) {
      case google::protobuf::FieldDescriptor::CPPTYPE_INT64: return scale * static_cast<double>(reflection->GetInt64(response, field));
      case google::protobuf::FieldDescriptor::CPPTYPE_UINT64: return scale * static_cast<double>(reflection->GetUInt64(response, field));
      case google::protobuf::FieldDescriptor::CPPTYPE_INT32: return scale * reflection->GetInt32(response, field);
      case google::protobuf::FieldDescriptor::CPPTYPE_UINT32: return scale * reflection->GetUInt32(response, field);
      default: break;
    }
  }
  return std::nullopt;
}

struct ReloadSample {
  double total_us = 0;
  double worker_us = 0;         // the worker's whole reload (LoadResult.load_micros)
  double before_unload_us = 0;  // UnloadReport.before_unload_micros
  double unload_us = 0;         // UnloadReport.unload_micros: checks + dlclose
  double daemon_us = 0;         // ReloadResponse.daemon_micros: inside relibd's supervisor
  double round_trip_us = 0;     // ReloadResponse.worker_round_trip_micros: command sent -> reply read
  double handling_us = 0;       // ReloadResponse.worker_handling_micros: command read -> reply written, in the worker
  std::optional<double> swap_pause_us;
};

ReloadSample ReloadOnce(v1::Relibd::Stub& stub, const std::string& name, const std::string& path) {
  v1::ReloadRequest request;
  request.set_name(name);
  request.set_path(path);
  v1::ReloadResponse response;
  grpc::ClientContext context;
  auto start = Clock::now();
  grpc::Status status = stub.Reload(&context, request, &response);
  ReloadSample sample;
  sample.total_us = MicrosBetween(start, Clock::now());
  if (!status.ok()) throw std::runtime_error(absl::StrCat("reload of ", name, " failed: ", status.error_message()));
  sample.worker_us = static_cast<double>(response.module().stats().load_micros());
  sample.before_unload_us = static_cast<double>(response.report().before_unload_micros());
  sample.unload_us = static_cast<double>(response.report().unload_micros());
  sample.daemon_us = static_cast<double>(response.daemon_micros());
  sample.round_trip_us = static_cast<double>(response.worker_round_trip_micros());
  sample.handling_us = static_cast<double>(response.worker_handling_micros());
  sample.swap_pause_us = SwapPauseMicros(response);
  return sample;
}

// The forwarding server's child copies `path`, dlopens, dlsyms and dlcloses
// it between request and reply (forward_server.cc): the reload design floor
// in one piece.
double ReloadFloorOnce(BareEcho::Stub& stub, const std::string& path) {
  v1::CallRequest request;
  request.set_name("reload-floor");
  request.set_input(absl::StrCat(relib::bench::kReloadFloorPrefix, path));
  v1::CallResponse response;
  grpc::ClientContext context;
  auto start = Clock::now();
  grpc::Status status = stub.Call(&context, request, &response);
  double micros = MicrosBetween(start, Clock::now());
  if (!status.ok() || response.output() != "ok") {
    throw std::runtime_error(absl::StrCat("reload floor: ", status.error_message(), response.output()));
  }
  return micros;
}

// A Reload relibd refuses before any work (NOT_FOUND): its RPC path alone.
double RefusedReloadOnce(v1::Relibd::Stub& stub) {
  v1::ReloadRequest request;
  request.set_name("relib-bench-no-such-module");
  v1::ReloadResponse response;
  grpc::ClientContext context;
  auto start = Clock::now();
  grpc::Status status = stub.Reload(&context, request, &response);
  double micros = MicrosBetween(start, Clock::now());
  if (status.error_code() != grpc::StatusCode::NOT_FOUND) {
    throw std::runtime_error(absl::StrCat("reload of a missing module: ", status.error_message()));
  }
  return micros;
}

// The bare echo server's answer to the same refusal (NOT_FOUND, the same
// message; bench/echo_server.cc).
double BareRefusalOnce(BareEcho::Stub& stub) {
  v1::CallRequest request;
  request.set_name("relib-bench-no-such-module");
  v1::CallResponse response;
  grpc::ClientContext context;
  auto start = Clock::now();
  grpc::Status status = stub.Call(&context, request, &response);
  double micros = MicrosBetween(start, Clock::now());
  if (status.error_code() != grpc::StatusCode::NOT_FOUND) {
    throw std::runtime_error(absl::StrCat("bare refusal: ", status.error_message()));
  }
  return micros;
}

// copy + dlopen + dlsym + dlclose of `path`, as a plain process does it: the
// floor a reload through relibd is measured against. `dlclose_us`, if set,
// receives the dlclose part of it (timed inside the same run).
double CopyDlopenOnce(const std::string& path, const std::string& copy, double* dlclose_us = nullptr) {
  auto start = Clock::now();
  Clock::duration closing{};
  absl::Status done = relib::bench::CopyDlopen(path, copy, &closing);
  auto end = Clock::now();
  if (!done.ok()) throw std::runtime_error(std::string(done.message()));
  if (dlclose_us != nullptr) *dlclose_us = std::chrono::duration<double, std::micro>(closing).count();
  return MicrosBetween(start, end);
}

// `dlclose_us`, if set, receives the dlclose part of each sample.
std::vector<double> CopyDlopenLatencies(const std::string& a, const std::string& b, int n,
                                        std::vector<double>* dlclose_us = nullptr) {
  std::string copy = absl::StrCat("/tmp/relib-bench-copy-", ::getpid(), ".so");
  for (int i = 0; i < 5; ++i) CopyDlopenOnce(i % 2 ? a : b, copy);
  std::vector<double> samples;
  for (int i = 0; i < n; ++i) {
    double closing = 0;
    samples.push_back(CopyDlopenOnce(i % 2 ? a : b, copy, &closing));
    if (dlclose_us != nullptr) dlclose_us->push_back(closing);
  }
  return samples;
}

// fork + exec + wait of `relib-worker --help`: what starting a worker costs
// before it does anything of its own.
std::vector<double> SpawnWorkerLatencies(int n) {
  std::vector<double> samples;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  for (int i = 0; i < n + 2; ++i) {
    char* argv[] = {const_cast<char*>(kWorkerPath), const_cast<char*>("--help"), nullptr};
    auto start = Clock::now();
    pid_t pid;
    if (posix_spawn(&pid, kWorkerPath, &actions, nullptr, argv, environ) != 0) throw std::runtime_error("spawn");
    int status;
    ::waitpid(pid, &status, 0);
    if (i >= 2) samples.push_back(MicrosBetween(start, Clock::now()));
  }
  posix_spawn_file_actions_destroy(&actions);
  return samples;
}

// ---- /proc readings ----

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int64_t StatusField(const std::string& status, const std::string& field) {
  size_t at = status.find("\n" + field + ":");
  if (at == std::string::npos) return 0;
  return std::strtoll(status.c_str() + at + field.size() + 2, nullptr, 10);
}

struct ProcSnapshot {
  int64_t switches = 0;  // voluntary + nonvoluntary, summed over every thread
  int64_t cpu_ticks = 0;  // utime + stime
  int64_t minor_faults = 0;  // minflt: every thread, also ended ones
  int64_t rss_kib = 0;
  int64_t grpc_timer_switches = 0;  // of `switches`: gRPC's timer threads
};

ProcSnapshot Snapshot(pid_t pid) {
  ProcSnapshot snapshot;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), error)) {
    std::string status = ReadText(task.path().string() + "/status");
    const int64_t switches =
        StatusField(status, "voluntary_ctxt_switches") + StatusField(status, "nonvoluntary_ctxt_switches");
    snapshot.switches += switches;
    // gRPC 1.51's timer threads: every gRPC process has them.
    const std::string comm = ReadText(task.path().string() + "/comm");
    if (comm.rfind("grpc_global_tim", 0) == 0 || comm.rfind("timer_manager", 0) == 0) snapshot.grpc_timer_switches += switches;
  }
  std::string stat = ReadText(absl::StrCat("/proc/", pid, "/stat"));
  size_t paren = stat.rfind(')');
  if (paren != std::string::npos) {
    std::istringstream fields(stat.substr(paren + 2));
    std::string skip;
    for (int i = 3; i <= 9; ++i) fields >> skip;  // fields 3..9
    fields >> snapshot.minor_faults;              // field 10
    for (int i = 11; i <= 13; ++i) fields >> skip;
    int64_t utime = 0, stime = 0;
    fields >> utime >> stime;
    snapshot.cpu_ticks = utime + stime;
  }
  snapshot.rss_kib = StatusField(ReadText(absl::StrCat("/proc/", pid, "/status")), "VmRSS");
  return snapshot;
}

int CountFds(pid_t pid) {
  int n = 0;
  std::error_code error;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++n;
  }
  return n;
}

// ---- the figures ----

class Bench {
 public:
  explicit Bench(Scale scale) : scale_(std::move(scale)) {}

  // `only`: section names to run (calls, throughput, reloads, rpc, fds, idle, swap,
  // crash); empty runs them all.
  std::vector<Figure> Run(const std::set<std::string>& only) {
    only_ = only;
    relibd_ = StartRelibd();
    echo_ = StartEchoServer();
    if (Want("reloads") || Want("rpc")) echo_from_fd_ = StartEchoServer(true);
    if (Want("calls") || Want("throughput") || Want("reloads") || only_.count("call-loop")) {
      forward_ = StartForwardServer();
    }
    if (Want("calls") || only_.count("call-loop")) {
      echo_bdp_off_ = StartEchoServerBdpOff();
      forward_bdp_off_ = StartForwardServer(/*bdp_off=*/true);
      forward_as_relibd_ = StartForwardServer(/*bdp_off=*/true, /*from_fd=*/true);
    }
    stub_ = v1::Relibd::NewStub(relibd_->channel());
    LoadModule(*stub_, "echo", kBenchEchoV1, "default");
    LoadModule(*stub_, "reload_small", kBenchEchoV1, "reload");
    LoadModule(*stub_, "reload_big", kBenchBigV1, "reload_big");
    LoadModule(*stub_, "fds", kBenchEchoV1, "fds");

    if (Want("calls")) Calls();
    if (Want("throughput") || Want("swap")) ThroughputFigures();
    if (Want("reloads")) Reloads();
    if (Want("reloads") || Want("rpc")) RpcPathAlone();
    if (only_.count("reload-loop")) ReloadLoop();
    if (only_.count("call-loop")) CallLoop();
    if (Want("fds")) Fds();
    if (Want("idle")) Idle();
    if (Want("swap")) SwapUnderLoad();
    stub_.reset();
    echo_.reset();
    echo_from_fd_.reset();
    forward_.reset();
    echo_bdp_off_.reset();
    forward_bdp_off_.reset();
    forward_as_relibd_.reset();
    relibd_.reset();
    if (Want("crash")) CrashToServing();
    return figures_;
  }

 private:
  void Add(Figure figure) {
    Progress(absl::StrFormat("%s: %.1f %s%s", figure.figure, figure.value, figure.unit,
                             figure.baseline ? absl::StrFormat(" (baseline %.1f)", *figure.baseline) : ""));
    figures_.push_back(std::move(figure));
  }

  void Calls() {
    CallFn relibd = RelibdCaller(relibd_->channel());
    CallFn bare = EchoCaller(echo_->channel());
    CallFn floor = EchoCaller(forward_->channel());
    CallFn bare_bdp_off = EchoCaller(echo_bdp_off_->channel());
    CallFn floor_bdp_off = EchoCaller(forward_bdp_off_->channel());
    CallFn floor_as_relibd = EchoCaller(forward_as_relibd_->channel());
    struct Size {
      const char* label;
      const char* key;
      size_t bytes;
      int n;
    };
    for (const Size& size : {Size{"32 B", "32b", 32, scale_.call_32b}, Size{"64 KiB", "64k", 64 << 10, scale_.call_64k},
                             Size{"1 MiB", "1m", 1 << 20, scale_.call_1m}}) {
      v1::CallRequest request = EchoRequest("echo", size.bytes);
      // Alternate halves so drift of the machine hits every side alike.
      // Over 64 KiB, also the servers with relibd's flow-control setting.
      const bool flow_floor = size.bytes >= (64u << 10);
      // Up to 64 KiB, also the floor server served as relibd serves.
      const bool served_floor = size.bytes <= (64u << 10);
      std::vector<double> ours, theirs, floors, bare_flow, floor_flow, floor_served;
      for (int half = 0; half < 2; ++half) {
        auto a = CallLatencies(relibd, request, size.n / 2 + 1);
        auto b = CallLatencies(bare, request, size.n / 2 + 1);
        auto c = CallLatencies(floor, request, size.n / 2 + 1);
        ours.insert(ours.end(), a.begin(), a.end());
        theirs.insert(theirs.end(), b.begin(), b.end());
        floors.insert(floors.end(), c.begin(), c.end());
        if (served_floor) {
          auto f = CallLatencies(floor_as_relibd, request, size.n / 2 + 1);
          floor_served.insert(floor_served.end(), f.begin(), f.end());
        }
        if (flow_floor) {
          auto d = CallLatencies(bare_bdp_off, request, size.n / 2 + 1);
          auto e = CallLatencies(floor_bdp_off, request, size.n / 2 + 1);
          bare_flow.insert(bare_flow.end(), d.begin(), d.end());
          floor_flow.insert(floor_flow.end(), e.begin(), e.end());
        }
      }
      Add({absl::StrCat("call_p50_", size.key), absl::StrCat("`Call` p50, ", size.label, " echo"), "µs", P50(ours),
           P50(theirs), "bare gRPC sync unary echo, Unix socket", "ratio<=1.3", ""});
      Add({absl::StrCat("call_floor_p50_", size.key),
           absl::StrCat("  floor: bare gRPC server + one round trip to a child process, ", size.label), "µs",
           P50(floors), P50(theirs), "bare gRPC sync unary echo, Unix socket", "", ""});
      Add({absl::StrCat("call_vs_floor_p50_", size.key), absl::StrCat("  `Call` p50, ", size.label, " vs that floor"),
           "µs", P50(ours), P50(floors), "floor", "", ""});
      if (served_floor) {
        // What serving the way relibd must serve costs the floor: relibd
        // accepts its API connections itself to read each client's
        // SO_PEERCRED (gRPC 1.51 gives a handler no peer uid on a Unix
        // socket), hands them to gRPC by fd with the poll engine (with
        // epoll1 a request to one of relibd's servers was read by another
        // server's thread and handed over), BDP probing off (idle wake-ups).
        Add({absl::StrCat("call_floor_as_relibd_p50_", size.key),
             absl::StrCat("  floor served as relibd serves (own accept + AddInsecureChannelFromFd, poll engine, BDP "
                          "probe off), ",
                          size.label),
             "µs", P50(floor_served), P50(theirs), "bare gRPC sync unary echo, Unix socket", "", ""});
        Add({absl::StrCat("call_vs_floor_as_relibd_p50_", size.key),
             absl::StrCat("  `Call` p50, ", size.label, " vs the floor served as relibd serves"), "µs", P50(ours),
             P50(floor_served), "floor served as relibd serves", "", ""});
      }
      if (flow_floor) {
        Add({absl::StrCat("call_bdp_off_reference_p50_", size.key),
             absl::StrCat("  reference, not a floor: bare gRPC sync unary echo with relibd's chosen flow-control "
                          "setting (BDP probe off, kept for idle wake-ups: the connection window stays 64 KiB), ",
                          size.label),
             "µs", P50(bare_flow), P50(theirs), "bare gRPC sync unary echo, Unix socket", "",
             "the request waits for the server's WINDOW_UPDATE"});
        Add({absl::StrCat("call_bdp_off_forward_reference_p50_", size.key),
             absl::StrCat("  reference, not a floor: bare gRPC server + one round trip to a child process, BDP probe "
                          "off, ",
                          size.label),
             "µs", P50(floor_flow), P50(theirs), "bare gRPC sync unary echo, Unix socket", "", ""});
        Add({absl::StrCat("call_vs_bdp_off_reference_p50_", size.key),
             absl::StrCat("  `Call` p50, ", size.label, " vs that reference"), "µs", P50(ours), P50(floor_flow),
             "forwarding server, BDP probe off", "", ""});
      }
    }
  }

  void ThroughputFigures() {
    Throughput ours = MeasureThroughput(relibd_->socket(), true, "echo", 8, scale_.throughput_s);
    Throughput theirs = MeasureThroughput(echo_->socket(), false, "echo", 8, scale_.throughput_s);
    throughput_8_ = ours.calls_per_s;
    Add({"call_throughput_8", "`Call` throughput, 8 client threads", "calls/s", ours.calls_per_s, theirs.calls_per_s,
         "bare echo server, 8 client threads", "ratio>=0.8",
         absl::StrCat(absl::StrFormat("p50 %.0f µs, p99 %.0f µs", P50(ours.latencies),
                                      Percentile(ours.latencies, 0.99)),
                      ours.errors ? absl::StrCat(", ", ours.errors, " errors") : "")});
    if (forward_) {
      Throughput floor = MeasureThroughput(forward_->socket(), false, "echo", 8, scale_.throughput_s);
      Add({"call_floor_throughput_8", "  floor: bare gRPC server + one round trip to a child process, 8 client threads",
           "calls/s", floor.calls_per_s, theirs.calls_per_s, "bare echo server, 8 client threads", "",
           absl::StrCat(absl::StrFormat("p50 %.0f µs, p99 %.0f µs", P50(floor.latencies),
                                        Percentile(floor.latencies, 0.99)),
                        floor.errors ? absl::StrCat(", ", floor.errors, " errors") : "")});
      Add({"call_vs_floor_throughput_8", "  `Call` throughput, 8 client threads, vs that floor", "calls/s",
           ours.calls_per_s, floor.calls_per_s, "floor", "", ""});
    }
  }

  void Reloads() {
    struct Module {
      const char* name;
      const char* key;
      const char* label;
      const char* v1;
      const char* v2;
      int n;
      const char* target;
    };
    for (const Module& m :
         {Module{"reload_small", "small", "small module", kBenchEchoV1, kBenchEchoV2, scale_.reloads_small, "ratio<=3"},
          Module{"reload_big", "big", "~5 MB module", kBenchBigV1, kBenchBigV2, scale_.reloads_big, "ratio<=2"}}) {
      for (int i = 0; i < 5; ++i) ReloadOnce(*stub_, m.name, i % 2 ? m.v1 : m.v2);
      std::vector<double> total, worker, before, unload, baseline, round_trip, rpc_layer, daemon_own, link;
      std::vector<double> handling, transport;  // the link's two parts
      std::vector<double> baseline_dlclose;  // the dlclose part of each baseline sample
      // The floor's RPC part: a bare gRPC sync unary round trip (32 B echo),
      // measured between the halves like the copy + dlopen baseline.
      CallFn bare = EchoCaller(echo_->channel());
      // The design's floor adds one round trip to a child process (relibd
      // never runs module code): the forwarding server (forward_server.cc).
      CallFn forward = EchoCaller(forward_->channel());
      std::vector<double> forward_trip;
      // The design floor in one piece: the forwarding server's child does
      // the baseline's copy + dlopen + dlsym + dlclose between request and
      // reply, so the wake-ups after waits as long as the reload's are in it
      // (sums of short round trips and the in-process baseline miss them).
      std::vector<double> floor_in_one;
      auto floor_stub = BareEcho::NewStub(forward_->channel());
      for (int i = 0; i < 5; ++i) ReloadFloorOnce(*floor_stub, i % 2 ? m.v1 : m.v2);  // warm-up
      const v1::CallRequest echo_request = EchoRequest("echo", 32);
      for (int half = 0; half < 2; ++half) {
        auto r = CallLatencies(bare, echo_request, m.n / 2 + 1);
        round_trip.insert(round_trip.end(), r.begin(), r.end());
        auto f = CallLatencies(forward, echo_request, m.n / 2 + 1);
        forward_trip.insert(forward_trip.end(), f.begin(), f.end());
        for (int i = 0; i < m.n / 2 + 1; ++i) {
          floor_in_one.push_back(ReloadFloorOnce(*floor_stub, i % 2 ? m.v1 : m.v2));
        }
        for (int i = 0; i < m.n / 2 + 1; ++i) {
          ReloadSample s = ReloadOnce(*stub_, m.name, i % 2 ? m.v1 : m.v2);
          total.push_back(s.total_us);
          worker.push_back(s.worker_us);
          before.push_back(s.before_unload_us);
          unload.push_back(s.unload_us);
          rpc_layer.push_back(s.total_us - s.daemon_us);
          daemon_own.push_back(s.daemon_us - s.round_trip_us);
          link.push_back(s.round_trip_us - s.worker_us);
          handling.push_back(s.handling_us - s.worker_us);
          transport.push_back(s.round_trip_us - s.handling_us);
        }
        auto b = CopyDlopenLatencies(m.v1, m.v2, m.n / 2 + 1, &baseline_dlclose);
        baseline.insert(baseline.end(), b.begin(), b.end());
      }
      Add({absl::StrCat("reload_p50_", m.key), absl::StrCat("reload p50, ", m.label, ", through the gRPC API"), "µs",
           P50(total), P50(baseline), "copy + dlopen + dlsym + dlclose of the same files", m.target, ""});
      double worker_p50 = P50(worker), unload_p50 = P50(unload), before_p50 = P50(before);
      Add({absl::StrCat("reload_phase_unload_", m.key), absl::StrCat("  phase: unload checks + dlclose (", m.label, ")"),
           "µs", unload_p50, std::nullopt, "", "", "UnloadReport.unload_micros p50"});
      Add({absl::StrCat("reload_phase_load_", m.key),
           absl::StrCat("  phase: worker's copy + dlopen + on_load + before_unload (", m.label, ")"), "µs",
           std::max(0.0, worker_p50 - unload_p50), std::nullopt, "", "",
           absl::StrFormat("LoadResult.load_micros - unload_micros, p50s; before_unload p50 %.0f µs", before_p50)});
      Add({absl::StrCat("reload_phase_relibd_", m.key),
           absl::StrCat("  phase: relibd (RPC, file checks, its copy, link) (", m.label, ")"), "µs",
           std::max(0.0, P50(total) - worker_p50), std::nullopt, "", "", "total - LoadResult.load_micros, p50s"});
      Add({absl::StrCat("reload_phase_rpc_", m.key),
           absl::StrCat("    of which gRPC client <-> relibd's supervisor (", m.label, ")"), "µs", P50(rpc_layer),
           std::nullopt, "", "", "p50 of total - ReloadResponse.daemon_micros"});
      Add({absl::StrCat("reload_phase_daemon_", m.key),
           absl::StrCat("    of which relibd's own work: dir checks, its copy, link placement, cleanup (", m.label, ")"),
           "µs", P50(daemon_own), std::nullopt, "", "", "p50 of daemon_micros - worker_round_trip_micros"});
      Add({absl::StrCat("reload_phase_link_", m.key),
           absl::StrCat("    of which the worker link around the worker's reload: command, reply, thread hand-offs (",
                        m.label, ")"),
           "µs", P50(link), std::nullopt, "", "", "p50 of worker_round_trip_micros - LoadResult.load_micros"});
      Add({absl::StrCat("reload_phase_worker_handling_", m.key),
           absl::StrCat("      of which the worker's handling outside its load timer: hand-over to the control "
                        "thread, unload report, usage scan, reply building (",
                        m.label, ")"),
           "µs", P50(handling), std::nullopt, "", "",
           "p50 of ReloadResponse.worker_handling_micros - LoadResult.load_micros"});
      Add({absl::StrCat("reload_phase_transport_", m.key),
           absl::StrCat("      of which the link itself: relibd's send and read, the worker's read and decoding of the "
                        "command and write of the reply, the two wake-ups (",
                        m.label, ")"),
           "µs", P50(transport), std::nullopt, "", "",
           "p50 of worker_round_trip_micros - worker_handling_micros"});
      // What no reload through an RPC can go below: the bare round trip plus
      // the baseline's copy + dlopen + dlsym + dlclose.
      const double floor = P50(round_trip) + P50(baseline);
      Add({absl::StrCat("reload_floor_", m.key),
           absl::StrCat("  floor: bare gRPC round trip + copy + dlopen + dlsym + dlclose (", m.label, ")"), "µs",
           P50(total), floor, "the reload p50 against the sum of the two p50s", "",
           absl::StrFormat("bare gRPC sync unary round trip p50 %.0f µs + baseline p50 %.0f µs", P50(round_trip),
                           P50(baseline))});
      const double design_floor = P50(forward_trip) + P50(baseline);
      Add({absl::StrCat("reload_design_floor_", m.key),
           absl::StrCat("  floor: bare gRPC server + one round trip to a child process + copy + dlopen + dlsym + "
                        "dlclose (",
                        m.label, ")"),
           "µs", P50(total), design_floor, "the reload p50 against the sum of the two p50s", "",
           absl::StrFormat("forwarding server round trip p50 %.0f µs + baseline p50 %.0f µs; floor / baseline %.2fx",
                           P50(forward_trip), P50(baseline), design_floor / P50(baseline))});
      Add({absl::StrCat("reload_design_floor_in_one_", m.key),
           absl::StrCat("  floor: the same design measured in one piece: a bare gRPC server whose child process does "
                        "the copy + dlopen + dlsym + dlclose between request and reply (",
                        m.label, ")"),
           "µs", P50(total), P50(floor_in_one), "the reload p50 against that floor's p50", "",
           absl::StrFormat("floor p50 %.0f µs; floor / baseline %.2fx; the sum above %.0f µs", P50(floor_in_one),
                           P50(floor_in_one) / P50(baseline), design_floor)});
      // A reference, not a floor: the design floor plus relibd's own
      // measured times for the work it adds and must keep (its last-good
      // copy with the allowed-directory check, inside relibd's own work
      // p50, which also holds everything else relibd does for a reload; and
      // the worker's unload beyond a bare dlclose, its checks as relibd
      // implements them today). A floor is the least that required work
      // costs, measured on its own; these are relibd's current costs, so a
      // reload near this row says only that the rest of the path adds
      // little. Small module only: there the worker makes its own copy (the
      // baseline's), so relibd's is a second one; a large module reaches the
      // worker through a link to relibd's copy, and the sum would count that
      // copy twice.
      const double relibd_parts = std::max(0.0, P50(daemon_own)) + std::max(0.0, unload_p50 - P50(baseline_dlclose));
      const double reference = design_floor + relibd_parts;
      if (std::string_view(m.key) == "small") Add({absl::StrCat("reload_relibd_parts_reference_", m.key),
           absl::StrCat("  reference, not a floor: that floor + relibd's own work p50 (its last-good copy, dir "
                        "checks and the rest) + the worker's unload beyond a bare dlclose (", m.label, ")"),
           "µs", P50(total), reference, "the reload p50 against the sum of the p50s", "",
           absl::StrFormat("design floor %.0f µs + relibd's own work p50 %.0f µs + unload p50 %.0f µs - a bare "
                           "dlclose p50 %.0f µs (relibd's measured costs, not least costs); sum / baseline %.2fx",
                           design_floor, P50(daemon_own), unload_p50, P50(baseline_dlclose),
                           reference / P50(baseline))});
    }
    ReloadWithStateDir();
    // Worker RSS drift over many reloads of the small module.
    pid_t worker = WorkerOf("reload_small");
    int64_t before = Snapshot(worker).rss_kib;
    for (int i = 0; i < scale_.drift_reloads; ++i) ReloadOnce(*stub_, "reload_small", i % 2 ? kBenchEchoV1 : kBenchEchoV2);
    int64_t after = Snapshot(worker).rss_kib;
    double per_10k = static_cast<double>(after - before) * 10000.0 / scale_.drift_reloads;
    Add({"worker_rss_drift", absl::StrCat("worker RSS drift over ", scale_.drift_reloads, " reloads, per 10,000"),
         "KiB", per_10k, std::nullopt, "", "value<1024",
         absl::StrCat("VmRSS ", before, " KiB -> ", after, " KiB")});
  }

  // The small reload as the systemd unit runs relibd: with a state dir, so
  // that every reload is also written to the persistent module table
  // (daemon/module_table.h), against the same baseline measured alongside.
  void ReloadWithStateDir() {
    auto state = common::TempDir::Create("/tmp", "relib-bench-state-");
    if (!state.ok()) throw std::runtime_error(state.status().ToString());
    auto relibd = StartRelibd({"--state-dir", state->path()});
    auto stub = v1::Relibd::NewStub(relibd->channel());
    LoadModule(*stub, "m", kBenchEchoV1, "default");
    for (int i = 0; i < 5; ++i) ReloadOnce(*stub, "m", i % 2 ? kBenchEchoV1 : kBenchEchoV2);
    std::vector<double> total, baseline, daemon_own;
    for (int half = 0; half < 2; ++half) {
      for (int i = 0; i < scale_.reloads_small / 2 + 1; ++i) {
        ReloadSample s = ReloadOnce(*stub, "m", i % 2 ? kBenchEchoV1 : kBenchEchoV2);
        total.push_back(s.total_us);
        daemon_own.push_back(s.daemon_us - s.round_trip_us);
      }
      auto b = CopyDlopenLatencies(kBenchEchoV1, kBenchEchoV2, scale_.reloads_small / 2 + 1);
      baseline.insert(baseline.end(), b.begin(), b.end());
    }
    Add({"reload_p50_small_state_dir",
         "  reload p50, small module, with a state dir (--state-dir, as the systemd unit runs relibd)", "µs",
         P50(total), P50(baseline), "copy + dlopen + dlsym + dlclose of the same files", "",
         absl::StrFormat("relibd's own work p50 %.0f µs (its copies, the module table's newest file)",
                         P50(daemon_own))});
  }

  // Pid of the worker hosting `module` (0 if relibd does not know it).
  // For profiling (perf, strace), never part of a run of every section:
  // reloads of the small module back to back for RELIB_BENCH_LOOP_S seconds
  // (default 10), after printing the pids to attach to.
  void ReloadLoop() {
    const char* env = std::getenv("RELIB_BENCH_LOOP_S");
    const double seconds = env != nullptr ? std::atof(env) : 10.0;
    Progress(absl::StrFormat("reload loop: relibd pid %d, worker pid %d, %.0f s", relibd_->pid(),
                             WorkerOf("reload_small"), seconds));
    std::vector<double> total, worker, unload, rpc_layer, daemon_own, link, handling, transport;
    const pid_t worker_pid = WorkerOf("reload_small");
    const ProcSnapshot d0 = Snapshot(relibd_->pid()), w0 = Snapshot(worker_pid);
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    for (int i = 0; Clock::now() < end; ++i) {
      ReloadSample s = ReloadOnce(*stub_, "reload_small", i % 2 ? kBenchEchoV1 : kBenchEchoV2);
      total.push_back(s.total_us);
      worker.push_back(s.worker_us);
      unload.push_back(s.unload_us);
      rpc_layer.push_back(s.total_us - s.daemon_us);
      daemon_own.push_back(s.daemon_us - s.round_trip_us);
      link.push_back(s.round_trip_us - s.worker_us);
      handling.push_back(s.handling_us - s.worker_us);
      transport.push_back(s.round_trip_us - s.handling_us);
    }
    const ProcSnapshot d1 = Snapshot(relibd_->pid()), w1 = Snapshot(worker_pid);
    // CPU time per reload (all threads; clock ticks of 10 ms, so long loops).
    const double tick_us = 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK)) / static_cast<double>(total.size());
    Progress(absl::StrFormat("reload loop: %d reloads, p50 total %.0f µs: rpc %.0f, relibd %.0f, link %.0f "
                             "(worker's handling outside its load timer %.0f, transport %.0f), "
                             "worker %.0f (of which unload %.0f); CPU per reload: relibd %.0f µs, worker %.0f µs, "
                             "context switches per reload: relibd %.1f, worker %.1f",
                             total.size(), P50(total), P50(rpc_layer), P50(daemon_own), P50(link), P50(handling),
                             P50(transport), P50(worker),
                             P50(unload), (d1.cpu_ticks - d0.cpu_ticks) * tick_us, (w1.cpu_ticks - w0.cpu_ticks) * tick_us,
                             static_cast<double>(d1.switches - d0.switches) / total.size(),
                             static_cast<double>(w1.switches - w0.switches) / total.size()));
  }

  // A profiling loop, never part of a full run: Calls of RELIB_BENCH_LOOP_BYTES
  // (32 by default) for RELIB_BENCH_LOOP_S seconds against relibd, or against
  // the bare echo or floor server with RELIB_BENCH_LOOP_TARGET=bare|floor (or
  // bare-off|floor-off: the same with BDP probing off, as relibd runs;
  // floor-fd: the floor served as relibd serves, see StartForwardServer),
  // with the CPU time (all threads, also ended ones) and context switches
  // (threads alive at both ends only: gRPC's sync servers start and end
  // threads, so use perf stat for those) per call of each process.
  void CallLoop() {
    const char* seconds_env = std::getenv("RELIB_BENCH_LOOP_S");
    const char* bytes_env = std::getenv("RELIB_BENCH_LOOP_BYTES");
    const char* target_env = std::getenv("RELIB_BENCH_LOOP_TARGET");
    const double seconds = seconds_env != nullptr ? std::atof(seconds_env) : 10.0;
    const size_t bytes = bytes_env != nullptr ? std::strtoull(bytes_env, nullptr, 10) : 32;
    const std::string target = target_env != nullptr ? target_env : "relibd";
    Server* server = target == "bare"        ? echo_.get()
                     : target == "floor"     ? forward_.get()
                     : target == "bare-off"  ? echo_bdp_off_.get()
                     : target == "floor-off" ? forward_bdp_off_.get()
                     : target == "floor-fd"  ? forward_as_relibd_.get()
                                             : relibd_.get();
    CallFn call = target == "relibd" ? RelibdCaller(server->channel()) : EchoCaller(server->channel());
    const pid_t worker_pid = target == "relibd" ? WorkerOf("echo") : 0;
    Progress(absl::StrFormat("call loop: %s pid %d, worker pid %d, %zu bytes, %.0f s", target, server->pid(),
                             worker_pid, bytes, seconds));
    const v1::CallRequest request = EchoRequest("echo", bytes);
    CallLatencies(call, request, 200);  // warm-up
    const ProcSnapshot d0 = Snapshot(server->pid());
    const ProcSnapshot w0 = worker_pid ? Snapshot(worker_pid) : ProcSnapshot{};
    std::vector<double> latencies;
    size_t made = 0;  // CallLatencies also makes 20 untimed calls per batch: CPU is per call made
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    do {
      auto some = CallLatencies(call, request, 100);
      made += some.size() + 20;
      latencies.insert(latencies.end(), some.begin(), some.end());
    } while (Clock::now() < end);
    const ProcSnapshot d1 = Snapshot(server->pid());
    const ProcSnapshot w1 = worker_pid ? Snapshot(worker_pid) : ProcSnapshot{};
    const double n = static_cast<double>(made);
    const double tick_us = 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK)) / n;
    Progress(absl::StrFormat("call loop: %zu calls, p50 %.1f µs, p90 %.1f µs; CPU per call: server %.1f µs, worker %.1f "
                             "µs; context switches per call (threads alive throughout): server %.2f, worker %.2f; "
                             "page faults per call: server %.2f, worker %.2f",
                             latencies.size(), P50(latencies), Percentile(latencies, 0.9),
                             (d1.cpu_ticks - d0.cpu_ticks) * tick_us, (w1.cpu_ticks - w0.cpu_ticks) * tick_us,
                             static_cast<double>(d1.switches - d0.switches) / n,
                             static_cast<double>(w1.switches - w0.switches) / n,
                             static_cast<double>(d1.minor_faults - d0.minor_faults) / n,
                             static_cast<double>(w1.minor_faults - w0.minor_faults) / n));
  }

  pid_t WorkerOf(const std::string& module) {
    v1::StatusResponse status;
    grpc::ClientContext context;
    stub_->Status(&context, v1::StatusRequest(), &status);
    for (const auto& info : status.modules()) {
      if (info.name() == module) return info.worker_pid();
    }
    return 0;
  }

  void Fds() {
    pid_t worker = WorkerOf("fds");
    CallFn relibd = RelibdCaller(relibd_->channel());
    v1::CallRequest request = EchoRequest("fds", 32);
    int few = CountFds(worker), many = few;
    // Alternating rounds on the same worker (fds opened, then closed again),
    // so drift over the run weighs on both sides alike.
    std::vector<double> base, loaded;
    constexpr int kRounds = 4;
    for (int round = 0; round < kRounds; ++round) {
      auto few_calls = CallLatencies(relibd, request, scale_.fd_calls / kRounds);
      base.insert(base.end(), few_calls.begin(), few_calls.end());
      CallText(*stub_, "fds", "hold_fds", std::to_string(std::max(0, 1000 - few)));
      many = CountFds(worker);
      auto many_calls = CallLatencies(relibd, request, scale_.fd_calls / kRounds);
      loaded.insert(loaded.end(), many_calls.begin(), many_calls.end());
      CallText(*stub_, "fds", "release_fds", "");
    }
    Add({"call_fds_1000", absl::StrCat("`Call` p50 with ", many, " fds open in the worker"), "µs", P50(loaded), P50(base),
         absl::StrCat("same worker with ", few, " fds"), "ratio<=1.1",
         absl::StrFormat("%+.0f µs per call", P50(loaded) - P50(base))});
  }

  // relibd's RPC path with no module work: a Reload refused at once (no
  // such module), beside a bare gRPC server giving the same answer (gRPC's
  // error path costs more than an OK answer, on both ends), and beside the
  // bare server's OK round trip. Rounds of the three alternate, so drift
  // weighs on all of them.
  void RpcPathAlone() {
    auto bare = BareEcho::NewStub(echo_->channel());
    auto bare_from_fd = BareEcho::NewStub(echo_from_fd_->channel());
    CallFn bare_ok = EchoCaller(echo_->channel());
    const v1::CallRequest echo_request = EchoRequest("echo", 32);
    std::vector<double> relibd, refused_bare, refused_bare_from_fd, ok_bare;
    const int n = scale_.reloads_small;
    for (int i = 0; i < 20; ++i) {  // warm-up
      RefusedReloadOnce(*stub_);
      BareRefusalOnce(*bare);
      BareRefusalOnce(*bare_from_fd);
    }
    for (int round = 0; round < 10; ++round) {
      for (int i = 0; i < n / 2 + 1; ++i) relibd.push_back(RefusedReloadOnce(*stub_));
      for (int i = 0; i < n / 2 + 1; ++i) refused_bare.push_back(BareRefusalOnce(*bare));
      for (int i = 0; i < n / 2 + 1; ++i) refused_bare_from_fd.push_back(BareRefusalOnce(*bare_from_fd));
      auto ok = CallLatencies(bare_ok, echo_request, n / 2 + 1);
      ok_bare.insert(ok_bare.end(), ok.begin(), ok.end());
    }
    Add({"rpc_path_refused", "relibd's RPC path alone: Reload refused at once, no such module", "µs", P50(relibd),
         P50(refused_bare), "bare gRPC sync server, the same NOT_FOUND answer", "",
         "relibd's server, transport and handler thread with no file, worker or table work"});
    Add({"rpc_path_refused_floor_from_fd",
         "  floor: bare gRPC sync server served as relibd serves (accepts itself, hands fds to gRPC, poll engine), "
         "the same NOT_FOUND answer",
         "µs", P50(refused_bare_from_fd), P50(refused_bare), "bare gRPC sync server, the same NOT_FOUND answer", "",
         ""});
    Add({"rpc_path_refused_vs_floor", "  relibd's RPC path alone vs that floor", "µs", P50(relibd),
         P50(refused_bare_from_fd), "floor", "", ""});
    Add({"rpc_path_error_cost", "  gRPC's own cost of an error answer (bare server, NOT_FOUND vs an OK 32 B echo)", "µs",
         P50(refused_bare), P50(ok_bare), "bare gRPC sync unary round trip (32 B echo)", "", ""});
  }

  void Idle() {
    pid_t worker = WorkerOf("echo");
    pid_t spare = SpareOf(relibd_->pid());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let in-flight work settle
    // The bare echo server (connected, idle) in the same window: what any
    // gRPC 1.51 server here costs idle, the floor of relibd's figure.
    ProcSnapshot d0 = Snapshot(relibd_->pid()), w0 = Snapshot(worker), e0 = Snapshot(echo_->pid());
    ProcSnapshot s0 = spare ? Snapshot(spare) : ProcSnapshot{};
    auto start = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(scale_.idle_s));
    ProcSnapshot d1 = Snapshot(relibd_->pid()), w1 = Snapshot(worker), e1 = Snapshot(echo_->pid());
    ProcSnapshot s1 = spare ? Snapshot(spare) : ProcSnapshot{};
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
    double floor = static_cast<double>(e1.switches - e0.switches) / seconds;
    for (auto [key, who, a, b] : {std::tuple{"relibd", "relibd", d0, d1}, std::tuple{"worker", "a worker", w0, w1}}) {
      bool daemon = std::string(key) == "relibd";
      Add({absl::StrCat("idle_wakeups_", key), absl::StrCat("idle wakeups per second, ", who), "/s",
           static_cast<double>(b.switches - a.switches) / seconds, daemon ? std::optional<double>(floor) : std::nullopt,
           daemon ? "bare gRPC sync echo server, idle, connected" : "", "value<=5",
           "context switches of all its threads"});
      Add({absl::StrCat("idle_cpu_", key), absl::StrCat("idle CPU, ", who), "%",
           100.0 * static_cast<double>(b.cpu_ticks - a.cpu_ticks) / tick / seconds, std::nullopt, "", "",
           absl::StrCat("RSS ", b.rss_kib, " KiB")});
    }
    Add({"idle_wakeups_echo_floor", "  floor: idle wakeups per second, bare gRPC sync echo server", "/s", floor,
         std::nullopt, "", "", "its timer threads (grpc_global_timer, timer_manager) and sync poller; same window"});
    const double grpc_timers = static_cast<double>(d1.grpc_timer_switches - d0.grpc_timer_switches) / seconds;
    Add({"idle_wakeups_relibd_grpc_timers", "  of relibd's: gRPC's timer threads (grpc_global_timer, timer_manager)", "/s",
         grpc_timers, std::nullopt, "", "", "the same threads as in the bare server"});
    Add({"idle_wakeups_relibd_own", "  of relibd's: all its other threads (relibd's own and gRPC's pollers)", "/s",
         static_cast<double>(d1.switches - d0.switches) / seconds - grpc_timers, std::nullopt, "", "", ""});
    if (spare) {
      Add({"idle_spare", "idle spare worker (--spare-workers 1): wakeups per second", "/s",
           static_cast<double>(s1.switches - s0.switches) / seconds, std::nullopt, "", "",
           absl::StrCat("RSS ", s1.rss_kib, " KiB")});
    }
  }

  // A relib-worker child of `daemon` that hosts no module (its spare), or 0.
  pid_t SpareOf(pid_t daemon) {
    std::set<pid_t> hosting;
    v1::StatusResponse status;
    grpc::ClientContext context;
    stub_->Status(&context, v1::StatusRequest(), &status);
    for (const auto& worker : status.workers()) hosting.insert(worker.pid());
    std::error_code error;
    for (const auto& task : std::filesystem::directory_iterator(absl::StrCat("/proc/", daemon, "/task"), error)) {
      for (const std::string& word :
           std::vector<std::string>(absl::StrSplit(ReadText(task.path().string() + "/children"), ' '))) {
        pid_t pid = std::atoi(word.c_str());
        if (pid <= 0 || hosting.count(pid)) continue;
        if (absl::StripAsciiWhitespace(ReadText(absl::StrCat("/proc/", pid, "/comm"))) == "relib-worker") return pid;
      }
    }
    return 0;
  }

  void SwapUnderLoad() {
    std::atomic<bool> stop{false};
    std::vector<double> pauses;
    int reloads = 0;
    std::thread reloader([&] {
      auto stub = v1::Relibd::NewStub(Connect(relibd_->socket(), true));
      while (!stop.load()) {
        ReloadSample s = ReloadOnce(*stub, "echo", reloads % 2 ? kBenchEchoV1 : kBenchEchoV2);
        if (s.swap_pause_us) pauses.push_back(*s.swap_pause_us);
        ++reloads;
      }
    });
    Throughput during = MeasureThroughput(relibd_->socket(), true, "echo", 8, scale_.swap_s);
    stop = true;
    reloader.join();
    Add({"throughput_during_reloads", absl::StrCat("`Call` throughput, 8 clients, during back-to-back reloads"),
         "calls/s", during.calls_per_s, throughput_8_, "same without reloads", "",
         absl::StrCat(reloads, " reloads, ", during.errors, " failed calls")});
    Add({"call_errors_during_reloads", "failed calls during reloads", "calls", static_cast<double>(during.errors),
         std::nullopt, "", "value<=0", ""});
    Add({"call_stall_during_reloads", "longest call during reloads (client-observed stall)", "µs",
         Percentile(during.latencies, 1.0), P50(during.latencies), "p50 of the same calls", "",
         absl::StrFormat("p99 %.0f µs", Percentile(during.latencies, 0.99))});
    if (!pauses.empty()) {
      Add({"swap_pause_p50", "swap pause p50 (ReloadResponse)", "µs", P50(pauses), std::nullopt, "", "",
           absl::StrFormat("max %.0f µs", Percentile(pauses, 1.0))});
    }
  }

  // Crash → serving of a fresh relibd with `flags`: the module is loaded,
  // relibd left alone for a moment (as a service runs: its spare worker, if
  // any, is up), then its export crashes the worker.
  std::vector<double> CrashSamples(const std::vector<std::string>& flags) {
    std::vector<double> samples;
    for (int i = 0; i < scale_.crashes; ++i) {
      auto relibd = StartRelibd(flags);  // default restart flags: every crash is a first crash
      auto stub = v1::Relibd::NewStub(relibd->channel());
      LoadModule(*stub, "m", kBenchEchoV1, "default");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      v1::CallRequest crash;
      crash.set_name("m");
      crash.set_export_name("crash");
      v1::CallRequest echo = EchoRequest("m", 32);
      v1::CallResponse response;
      auto start = Clock::now();
      {
        grpc::ClientContext context;
        if (stub->Call(&context, crash, &response).ok()) throw std::runtime_error("crash export returned");
      }
      for (;;) {
        grpc::ClientContext context;
        if (stub->Call(&context, echo, &response).ok()) break;
        if (Clock::now() - start > std::chrono::seconds(10)) throw std::runtime_error("module never came back");
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      samples.push_back(MicrosBetween(start, Clock::now()));
      if (std::getenv("RELIB_BENCH_VERBOSE")) Progress(absl::StrFormat("crash sample %.0f µs", samples.back()));
    }
    return samples;
  }

  void CrashToServing() {
    // Alternated so drift of the machine hits both alike.
    std::vector<double> with_spare, without_spare;
    for (int half = 0; half < 2; ++half) {
      auto a = CrashSamples({});
      auto b = CrashSamples({"--spare-workers", "0"});
      with_spare.insert(with_spare.end(), a.begin(), a.end());
      without_spare.insert(without_spare.end(), b.begin(), b.end());
    }
    auto spawn = SpawnWorkerLatencies(scale_.spawns);
    Add({"crash_to_serving_p50", "crash → module serving again, p50, default flags", "µs", P50(with_spare), P50(spawn),
         "fork + exec + exit of relib-worker (--help)", "value<=10000",
         "the group takes the warm spare worker; the crash comes 200 ms after the load"});
    Add({"crash_to_serving_no_spare_p50", "  crash → serving, p50, --spare-workers 0 (a fresh worker)", "µs",
         P50(without_spare), P50(spawn), "fork + exec + exit of relib-worker (--help)", "",
         "what the spare saves: the worker's start, on the critical path here"});
  }

  bool Want(const std::string& section) const { return only_.empty() || only_.count(section) > 0; }

  Scale scale_;
  std::set<std::string> only_;
  std::vector<Figure> figures_;
  std::unique_ptr<Server> relibd_;
  // The bare echo and the floor server with relibd's flow-control setting
  // (BDP probing off): the Call section's flow-control floor rows.
  std::unique_ptr<Server> echo_bdp_off_;
  std::unique_ptr<Server> forward_bdp_off_;
  std::unique_ptr<Server> echo_;
  std::unique_ptr<Server> echo_from_fd_;  // the same, served as relibd serves (see RpcPathAlone)
  std::unique_ptr<Server> forward_;  // the floor: echo + one round trip to a child
  // The floor server served as relibd serves its API: connections accepted
  // by the server and handed over by fd, poll engine, BDP probing off.
  std::unique_ptr<Server> forward_as_relibd_;
  std::unique_ptr<v1::Relibd::Stub> stub_;
  double throughput_8_ = 0;
};

}  // namespace
}  // namespace relib::bench

int main(int argc, char** argv) {
  std::string scale = "full", out;
  std::set<std::string> only;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--scale" && i + 1 < argc) {
      scale = argv[++i];
    } else if (arg == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (arg == "--only" && i + 1 < argc) {
      for (const std::string& section : std::vector<std::string>(absl::StrSplit(argv[++i], ','))) only.emplace(section);
    } else {
      std::fprintf(stderr, "usage: %s [--scale smoke|quick|full] [--out FILE] [--only calls,throughput,reloads,rpc,fds,idle,swap,crash,reload-loop,call-loop]\n", argv[0]);
      return 2;
    }
  }
  ::signal(SIGPIPE, SIG_IGN);
  try {
    relib::bench::Bench bench(relib::bench::ScaleNamed(scale));
    std::string json = relib::bench::ToJson(bench.Run(only), scale);
    if (out.empty()) {
      std::cout << json;
    } else {
      std::ofstream(out) << json;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
