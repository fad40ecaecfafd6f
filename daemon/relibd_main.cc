// relibd: the supervisor daemon. Parses flags, wires the Asio loop, the
// Supervisor and the gRPC server together, and shuts down on SIGINT/SIGTERM.
#include <signal.h>
#include <cerrno>
#include <cstdlib>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/signal_set.hpp"
#include "common/message_limits.h"
#include "common/socket_path.h"
#include "common/temp_dir.h"
#include "daemon/config_apply.h"
#include "daemon/config_file.h"
#include "daemon/event_bus.h"
#include "daemon/module_file.h"
#include "daemon/module_watcher.h"
#include "daemon/orphans.h"
#include "daemon/rpc_service.h"
#include "daemon/state_store.h"
#include "daemon/supervisor.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

std::string DefaultWorkerPath() {
  std::error_code error;
  auto self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? "relib-worker" : (self.parent_path() / "relib-worker").string();
}

// Refuses to steal the socket of a running daemon; removes a stale one.
bool PrepareSocketPath(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), error);
  if (!std::filesystem::exists(path)) return true;
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  bool in_use = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  if (in_use) {
    spdlog::critical("phase=startup another relibd is listening on {}", path);
    return false;
  }
  std::filesystem::remove(path, error);
  return true;
}

// Segments of relibd processes that died without cleaning up (SIGKILL,
// crash): flight recorders and anonymous state stores, named relibd.<pid>.*.
void RemoveStaleSegments() {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", error)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("relibd.", 0) != 0) continue;
    pid_t owner = std::atoi(name.c_str() + 7);
    if (owner <= 0 || owner == ::getpid() || ::kill(owner, 0) == 0 || errno != ESRCH) continue;
    std::filesystem::remove(entry.path(), error);
  }
}

// SIGHUP: reloads the config file on the applier's thread (the io thread
// must not block); without --config there is nothing to reload.
void ReloadConfig(relib::daemon::ConfigApplier* applier, const char* trigger) {
  if (!applier) {
    spdlog::warn("phase=config {} received but relibd was started without --config: nothing to reload", trigger);
    return;
  }
  applier->ReloadInBackground(trigger);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("relibd: live reload of native modules in supervised worker processes");
  // The last value of a repeated flag wins: the config file's values are put before the command line's.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::string socket_path = relib::common::DefaultSocketPath();
  std::string worker_path = DefaultWorkerPath();
  std::string run_dir;
  std::string state_dir;
  std::string log_level = "info";
  relib::daemon::SupervisorOptions options;
  int load_ms = 10000, on_load_ms = 10000, call_ms = 10000, before_unload_ms = 10000, unload_ms = 10000;
  int restart_window_s = 60, backoff_ms = 100, term_grace_ms = 200, stable_s = 10;
  app.add_option("--socket", socket_path, "Unix socket to serve the API on")->capture_default_str();
  app.add_option("--worker", worker_path, "relib-worker executable")->capture_default_str();
  app.add_option("--run-dir", run_dir, "parent directory for worker scratch dirs (default: a new temp dir)");
  app.add_option("--state-dir", state_dir,
                 "keep module state (host API save_state) in this directory so it survives relibd restarts");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.add_option("--load-deadline-ms", load_ms, "default deadline of copy + dlopen + static constructors")
      ->capture_default_str();
  app.add_option("--on-load-deadline-ms", on_load_ms, "default deadline of on_load")->capture_default_str();
  app.add_option("--call-deadline-ms", call_ms, "default deadline of one export call")->capture_default_str();
  app.add_option("--before-unload-deadline-ms", before_unload_ms, "default deadline of before_unload")
      ->capture_default_str();
  app.add_option("--unload-deadline-ms", unload_ms, "default deadline of the unload checks + dlclose (plus the thread grace)")
      ->capture_default_str();
  app.add_option("--term-grace-ms", term_grace_ms, "SIGTERM to SIGKILL delay when a deadline kills a worker")
      ->capture_default_str();
  app.add_option("--max-restarts", options.restart.max_restarts,
                 "a module crashing its worker more often than this within the window is marked failed")
      ->capture_default_str();
  app.add_option("--restart-window-s", restart_window_s, "window of the restart limits")->capture_default_str();
  app.add_option("--restart-backoff-ms", backoff_ms, "first restart delay; doubles per failed restart, up to 5 s")
      ->capture_default_str();
  app.add_option("--restart-stable-s", stable_s,
                 "a restarted worker dying sooner than this is a failed restart (the backoff grows); "
                 "one that stays up this long resets the backoff")
      ->capture_default_str();
  app.add_option("--max-failed-starts", options.restart.max_failed_starts,
                 "this many worker starts failing in a row (spawn error or exit before its hello) make relibd "
                 "exit with code 3; a crash loop in a group never does")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  int max_module_size_mb = static_cast<int>(relib::daemon::kDefaultMaxModuleSizeMb);
  app.add_option("--max-module-size-mb", max_module_size_mb,
                 "module files larger than this are refused before they are copied")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  int max_message_mb = relib::common::kDefaultMaxMessageMb;
  app.add_option("--max-message-mb", max_message_mb,
                 "largest gRPC message relibd sends or receives (an export's output or input, plus a little); "
                 "give relibctl the same value")
      ->capture_default_str()
      ->check(CLI::Range(1, relib::common::kMaxMaxMessageMb));
  int state_store_mb = relib::daemon::kDefaultStateStoreMb;
  app.add_option("--state-store-mb", state_store_mb,
                 "size of the module state store (host API save_state), reserved at startup in /dev/shm or in "
                 "--state-dir; a save that does not fit is refused to the module as RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--invalid-free", options.worker.invalid_free,
                 "when module code frees memory it does not own (the call's input, another module's block, a "
                 "pointer never allocated or already freed): abort = the worker dies of SIGABRT blamed on the "
                 "module; leak = the free is refused and logged, the module keeps running")
      ->capture_default_str()
      ->check(CLI::IsMember({"abort", "leak"}));
  int watch_debounce_ms = 200;
  app.add_option("--watch-debounce-ms", watch_debounce_ms,
                 "a watched module reloads once its file has been quiet this long after a finished write or rename")
      ->capture_default_str()
      ->check(CLI::Range(0, 60000));
  // Config file (README "Configuration file"): its daemon-wide settings become
  // flags ahead of the real command line, so the command line overrides them.
  std::string config_path;
  app.add_option("--config", config_path, "TOML config file: settings and modules to load; flags override it");
  std::optional<relib::daemon::RelibdConfig> config;
  std::vector<std::string> args = {argv[0]};
  if (std::string path = relib::daemon::ConfigPathFromArgs(argc, argv); !path.empty()) {
    auto parsed = relib::daemon::ParseConfigFile(path);
    if (!parsed.ok()) {
      std::fprintf(stderr, "relibd: %s\n", std::string(parsed.status().message()).c_str());
      return 2;
    }
    for (std::string& arg : relib::daemon::FlagArguments(*parsed)) args.push_back(std::move(arg));
    config = std::move(parsed).value();
  }
  args.insert(args.end(), argv + 1, argv + argc);
  std::vector<const char*> arg_pointers;
  for (const std::string& arg : args) arg_pointers.push_back(arg.c_str());

  app.set_version_flag("--version", std::string("relibd ") + RELIB_VERSION);
  try {
    app.parse(static_cast<int>(arg_pointers.size()), arg_pointers.data());
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every other command-line error is a usage error (2).
    return app.exit(e) == 0 ? 0 : 2;
  }

  ::signal(SIGPIPE, SIG_IGN);
  auto logger = spdlog::stderr_color_mt("relibd");
  logger->set_pattern(fmt::format("%Y-%m-%dT%H:%M:%S.%e %^%l%$ relibd[{}] %v", ::getpid()));
  logger->set_level(spdlog::level::from_str(log_level));
  spdlog::set_default_logger(logger);

  std::optional<relib::common::TempDir> owned_run_dir;
  if (run_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    auto created = relib::common::TempDir::Create(tmp && *tmp ? tmp : "/tmp", "relibd-");
    if (!created.ok()) {
      spdlog::critical("phase=startup {}", created.status().ToString());
      return 1;
    }
    owned_run_dir.emplace(std::move(created).value());
    run_dir = owned_run_dir->path();
  }
  if (::access(worker_path.c_str(), X_OK) != 0) {
    spdlog::critical("phase=startup worker executable {} is missing or not executable (pass --worker)",
                     worker_path);
    return 1;
  }
  if (!PrepareSocketPath(socket_path)) return 1;
  RemoveStaleSegments();
  // relibd keeps a duplicate of every fd modules store and a few fds per
  // worker and client: take the whole hard limit, not the soft 1024.
  if (rlimit files{}; ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  // Processes that escape a worker's process group (setsid) come back to
  // relibd when the worker dies, to be killed (see daemon/orphans.h).
  if (absl::Status status = relib::daemon::BecomeSubreaper(); !status.ok()) {
    spdlog::warn("phase=startup {}; processes that leave a worker's process group may outlive it",
                 status.ToString());
  }

  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  relib::daemon::EventBus events;
  options.worker.worker_path = worker_path;
  options.worker.run_dir = run_dir;
  options.worker.log_level = log_level;
  options.worker.term_grace = std::chrono::milliseconds(term_grace_ms);
  options.deadlines.load = std::chrono::milliseconds(load_ms);
  options.deadlines.on_load = std::chrono::milliseconds(on_load_ms);
  options.deadlines.call = std::chrono::milliseconds(call_ms);
  options.deadlines.before_unload = std::chrono::milliseconds(before_unload_ms);
  options.deadlines.unload = std::chrono::milliseconds(unload_ms);
  options.restart.window = std::chrono::seconds(restart_window_s);
  options.restart.backoff_initial = std::chrono::milliseconds(backoff_ms);
  options.restart.stable_after = std::chrono::seconds(stable_s);
  options.good_dir = run_dir + "/good";
  options.max_module_bytes = static_cast<uint64_t>(max_module_size_mb) << 20;
  const uint64_t max_message_bytes = relib::common::MegabytesToBytes(max_message_mb);
  options.worker.max_message_bytes = max_message_bytes;
  // One module's state travels to its worker in one load command.
  const uint64_t max_module_state = relib::common::LinkFrameLimit(max_message_bytes) - relib::common::kLoadEnvelopeBytes;
  auto state_store =
      relib::daemon::StateStore::Open(state_dir, relib::common::MegabytesToBytes(state_store_mb), max_module_state);
  if (!state_store.ok()) {
    spdlog::critical("phase=startup {}", state_store.status().ToString());
    return 1;
  }
  options.state_store = state_store->get();
  options.worker.max_state_bytes = std::min((*state_store)->capacity(), max_module_state);

  // Stops main: a signal number, or -1 when no worker can start.
  std::promise<int> stop_signal;
  std::once_flag stop_once;
  auto stop = [&](int why) { std::call_once(stop_once, [&] { stop_signal.set_value(why); }); };
  options.on_fatal = [&](const std::string&) { stop(-1); };
  relib::daemon::Supervisor supervisor(io, options, events);
  relib::daemon::RpcService service(supervisor, events);
  auto watcher = std::make_unique<relib::daemon::ModuleWatcher>(supervisor, std::chrono::milliseconds(watch_debounce_ms));
  supervisor.set_change_listener([w = watcher.get()] { w->Sync(); });

  // Config reloads: SIGHUP and the ReloadConfig RPC (README "Configuration file").
  std::unique_ptr<relib::daemon::ConfigApplier> config_applier;
  if (config) {
    config_applier = std::make_unique<relib::daemon::ConfigApplier>(supervisor, events, std::move(*config));
    config_applier->set_reload_hooks([] { /* sd_notify RELOADING=1 + MONOTONIC_USEC goes here */ },
                                     [] { /* sd_notify READY=1 goes here */ });
    service.set_config_reloader([a = config_applier.get()] { return a->Reload("ReloadConfig RPC"); });
  }
  boost::asio::signal_set hangups(io, SIGHUP);
  std::function<void()> wait_for_hangup = [&] {
    hangups.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      ReloadConfig(config_applier.get(), "SIGHUP");
      wait_for_hangup();
    });
  };
  wait_for_hangup();

  // Generic gRPC tools (grpcurl, grpc_cli, editor plugins) discover the API
  // through reflection and probe liveness through grpc.health.v1.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    spdlog::critical("phase=startup cannot listen on unix:{}", socket_path);
    return 1;
  }
  ::chmod(socket_path.c_str(), 0660);

  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signal) {
    if (!ec) stop(signal);
  });
  std::thread io_thread([&] { io.run(); });
  spdlog::info("phase=startup listening on unix:{} worker={} run-dir={} state={} ({} bytes)", socket_path, worker_path,
               run_dir, (*state_store)->location(), (*state_store)->capacity());
  // The file's modules, applied as a config reload against what runs now (after a
  // restore of the persistent module table, when there is one: README "Ownership").
  if (config_applier) config_applier->Apply();

  int signal = stop_signal.get_future().get();
  if (signal < 0) {
    spdlog::critical("phase=shutdown no relib-worker can start; exiting (code 3) so the service manager can take over");
  } else {
    spdlog::info("phase=shutdown signal {} received", signal);
  }
  // Workers first: RPCs waiting on them then fail fast instead of holding up
  // the server's shutdown; event streams end; idle client channels are not
  // waited for beyond a short grace.
  if (auto* health = server->GetHealthCheckService()) health->Shutdown();  // NOT_SERVING from now on
  supervisor.Shutdown();
  relib::daemon::KillAdoptedProcesses(std::chrono::milliseconds(2000));
  events.Close();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  config_applier.reset();  // after the supervisor (a reload in progress fails fast) and the last RPC
  // After the workers (a reload it runs now fails fast) and after the last
  // RPC (which may still notify it of a change).
  watcher.reset();
  work.reset();
  io.stop();
  io_thread.join();
  std::error_code ignored;
  std::filesystem::remove(socket_path, ignored);
  spdlog::info("phase=shutdown stopped");
  return signal < 0 ? 3 : 0;
}
