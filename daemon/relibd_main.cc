// relibd: the supervisor daemon. Parses flags, wires the Asio loop, the
// Supervisor and the gRPC server together, restores the persistent module
// table, talks to systemd, and stops gracefully on SIGINT/SIGTERM.
#include <pthread.h>
#include <signal.h>
#include <cerrno>
#include <cstdlib>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/signal_set.hpp"
#include "common/heap_reuse.h"
#include "common/message_limits.h"
#include "common/socket_path.h"
#include "common/temp_dir.h"
#include "daemon/access.h"
#include "daemon/config_apply.h"
#include "daemon/config_file.h"
#include "daemon/event_bus.h"
#include "daemon/event_streams.h"
#include "daemon/health_service.h"
#include "daemon/log_setup.h"
#include "daemon/module_dirs.h"
#include "daemon/module_file.h"
#include "daemon/module_table.h"
#include "daemon/module_watcher.h"
#include "daemon/orphans.h"
#include "daemon/peer_listener.h"
#include "daemon/reap_threads.h"
#include "daemon/rpc_service.h"
#include "daemon/self_probe.h"
#include "daemon/state_store.h"
#include "daemon/supervisor.h"
#include "daemon/systemd.h"
#include "grpc/grpc.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/resource_quota.h"
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

// Keeps gRPC initialized for main's lifetime, with its "poll" polling
// engine unless the environment names one (GRPC_POLL_STRATEGY). With the
// default engine (epoll1) every thread waiting on any completion queue of the
// process polls every connection: a request to the control server was often
// read by a thread of another server or by an Events thread, which then woke
// a control-server thread to run the handler. With "poll" a connection is
// polled only through the listening completion queues of the server it was
// handed to (see BuildServer), so the thread that reads a request runs it.
// gRPC reads the variable when it initializes; it is set only for that
// moment, so workers (and gRPC code in modules) get gRPC's default.
// REQUIRES: no other thread running, no gRPC object created yet.
class GrpcWithPollEngine {
 public:
  GrpcWithPollEngine() {
    const bool given = std::getenv("GRPC_POLL_STRATEGY") != nullptr;
    if (!given) ::setenv("GRPC_POLL_STRATEGY", "poll", 1);
    grpc_init();
    if (!given) ::unsetenv("GRPC_POLL_STRATEGY");
  }
  ~GrpcWithPollEngine() { grpc_shutdown(); }
  GrpcWithPollEngine(const GrpcWithPollEngine&) = delete;
  GrpcWithPollEngine& operator=(const GrpcWithPollEngine&) = delete;
};

// How long an idle sync-server polling thread waits before it wakes to wait
// again (gRPC's default is 10 s).
constexpr int kSyncPollTimeoutMs = 3600 * 1000;

// How many idle threads a server keeps waiting for requests (gRPC's default:
// 2). A sync-server thread that finishes a request while that many others
// already wait ends, and a request that takes the last waiting thread starts
// a new one: with more concurrent callers than that, gRPC started a thread on
// about one request in seven (8 callers). Threads kept waiting cost no
// wakeups (they wait kSyncPollTimeoutMs) but count against --max-rpc-threads
// (shared by the three servers): each server keeps at most an eighth of it
// (16 of the default 128), never fewer than gRPC's 2, so the threads one
// role keeps idle leave the others most of the quota.
int MaxIdlePollers(int max_rpc_threads) { return std::clamp(max_rpc_threads / 8, 2, 16); }

// A started gRPC server with no listening port of its own: PeerListener
// hands it connections. Every server answers server reflection (generic
// tools discover the API; its schema is public, installed with the SDK);
// grpc.health.v1 answers only to the roles that may see relibd's state.
// Threads for synchronous RPCs are bounded (Events needs none: asynchronous
// API, on the completion queue put in `events_queue`), and so are streams per
// connection, so a burst of clients cannot grow relibd without limit.
std::unique_ptr<grpc::Server> BuildServer(grpc::Service* service, uint64_t max_message_bytes,
                                          relib::daemon::HealthService* health, grpc::ResourceQuota& quota,
                                          int max_idle_pollers,
                                          std::unique_ptr<grpc::ServerCompletionQueue>* events_queue) {
  grpc::ServerBuilder builder;
  // Not "frequently polled": a server with such a queue and synchronous
  // methods is a hybrid in gRPC, whose synchronous queues never poll, so the
  // Events thread read every request and handed it to a synchronous thread.
  // This queue polls no connection (it does not listen); the synchronous
  // threads read their own requests and the Events thread is woken only for
  // its own completions.
  *events_queue = builder.AddCompletionQueue(/*is_frequently_polled=*/false);
  builder.RegisterService(service);
  if (health) builder.RegisterService(health);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 100);
  // A sync server's polling threads wake when their completion-queue wait
  // times out (10 s by default) only to wait again; a shutdown wakes them
  // anyway, so the timeout only costs idle wakeups.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::CQ_TIMEOUT_MSEC, kSyncPollTimeoutMs);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, max_idle_pollers);
  // No keepalive pings (gRPC's server default: one every 2 h per
  // connection, a timer each): on a Unix socket a peer that is gone closes
  // its end, which gRPC sees at once.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, std::numeric_limits<int>::max());
  // No bandwidth-delay-product probing on relibd's side of a connection: the
  // probe tunes the receive window for links with latency, and on a Unix
  // socket it only arms a connection timer after activity, whose firings
  // leave gRPC's timer thread waking several times a second afterwards
  // (its timer shards fall out of step). A message still arrives whole:
  // gRPC opens the stream's window to the size of the message being read.
  // The cost: with the probe off, gRPC 1.51 keeps the connection's receive
  // window at 64 KiB (only the probe's first update at connection start
  // raises it), so a request over 64 KiB stops at 64 KiB until relibd's
  // WINDOW_UPDATE reaches the client: one more round trip with the client
  // (seen on the wire; the bench's "BDP probe off" floor rows measure it).
  // GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES does not avoid it in 1.51: it
  // raises the stream's window, not the connection's.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  return builder.BuildAndStart();
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

// "unix:/path" of a bound Unix socket, or "" (abstract or unnamed).
std::string UnixAddressOf(int fd) {
  sockaddr_un address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 || address.sun_family != AF_UNIX ||
      length <= offsetof(sockaddr_un, sun_path) || address.sun_path[0] == '\0') {
    return "";
  }
  return std::string("unix:") + address.sun_path;
}

}  // namespace

int main(int argc, char** argv) {
  relib::common::KeepFreedCallBuffers();
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
                 "keep the module table (every module, its group, options and version, with relibd's copy of it) and "
                 "module state (host API save_state) here, so a restarted relibd loads them all again (default: "
                 "$STATE_DIRECTORY under systemd; none = in memory only)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off")->capture_default_str();
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
  // ---- restart speed and idle (issue 12) ----
  app.add_option("--spare-workers", options.spare_workers,
                 "keep this many (0 or 1) started, idle, module-less workers; a group that needs a worker and has "
                 "the common limits (--worker-limit '*' only) takes the spare instead of waiting for a new one, so a "
                 "crashed module serves again sooner; off while an nproc limit is set")
      ->capture_default_str()
      ->check(CLI::Range(0, 1));
  // ---- end restart speed and idle ----
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
  // ---- access control (issue 10) ----
  std::string socket_mode = "0660", socket_owner, socket_group;
  std::vector<std::string> view_groups, control_groups, module_dirs;
  app.add_option("--socket-mode", socket_mode, "permissions of the socket file (octal)")->capture_default_str();
  app.add_option("--socket-owner", socket_owner, "owner (user name or uid) of the socket file");
  app.add_option("--socket-group", socket_group,
                 "group of the socket file (name or gid); with mode 0660 only its members can connect");
  app.add_option("--view-group", view_groups,
                 "members of this group may use Status and Events (repeatable); root and relibd's own user may "
                 "do everything");
  app.add_option("--control-group", control_groups,
                 "members of this group may also Load, Reload, Unload and Call (repeatable)");
  app.add_option("--allow-module-dir", module_dirs,
                 "load modules only from inside this directory (repeatable); it and everything below it must be "
                 "writable by root or relibd's user only. Required when relibd runs as root (with none, every load "
                 "is refused); as another user, its own files are allowed when none is given");
  std::string worker_user;
  app.add_option("--worker-user", worker_user,
                 "when relibd runs as root, workers run as this user (name or uid) and its primary group, with no "
                 "supplementary groups and no_new_privs; default relib-worker, or nobody if relib-worker does not "
                 "exist; 'root' keeps workers as root (not recommended)");
  std::vector<std::string> worker_limits;
  app.add_option("--worker-limit", worker_limits,
                 "resource limit of the workers of a group, GROUP:KIND=VALUE (repeatable; GROUP * = every group): "
                 "memory (address space) or data (bytes, K/M/G suffix), nofile, nproc (per worker user), cpu "
                 "(seconds), core (bytes; default 0: no core dumps)");
  std::vector<std::string> preopen_tcp;
  app.add_option("--preopen-tcp", preopen_tcp,
                 "MODULE:KEY=[ADDR:]PORT (repeatable): relibd listens on this TCP port itself (ADDR default "
                 "127.0.0.1) and puts the socket in MODULE's fd store under KEY at each load, so an unprivileged "
                 "worker can serve a port below 1024");
  // ---- end access control ----
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

  // --- relibd as a system service (issue 9) ---
  int stop_timeout_ms = 20000;
  app.add_option("--stop-timeout-ms", stop_timeout_ms,
                 "on SIGTERM, time for every module's before_unload (each within its own deadline) before the "
                 "workers are stopped; keep it below systemd's TimeoutStopSec")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600 * 1000));
  int max_rpc_threads = 128;
  app.add_option("--max-rpc-threads", max_rpc_threads,
                 "threads serving synchronous RPCs at most (gRPC resource quota); more concurrent requests are "
                 "refused with RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(CLI::Range(4, 4096));
  app.set_version_flag("--version", std::string("relibd ") + RELIB_VERSION);
  try {
    app.parse(static_cast<int>(arg_pointers.size()), arg_pointers.data());
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every other command-line error is a usage error (2).
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto level = relib::daemon::ParseLogLevel(log_level);
  if (!level.ok()) {
    std::fprintf(stderr, "relibd: --log-level: %s\n", std::string(level.status().message()).c_str());
    return 2;
  }

  ::signal(SIGPIPE, SIG_IGN);
  // Before anything is spawned: workers must not inherit LISTEN_FDS.
  relib::daemon::systemd::PassedFds passed = relib::daemon::systemd::TakePassedFds();
  relib::daemon::SetUpLogging(*level);
  // Before any gRPC object and before any thread or child process starts.
  const GrpcWithPollEngine grpc_library;
  const relib::daemon::systemd::Notifier notifier;
  if (state_dir.empty()) {
    if (const char* from_systemd = std::getenv("STATE_DIRECTORY"); from_systemd && *from_systemd) {
      state_dir = std::string(from_systemd).substr(0, std::string(from_systemd).find(':'));
    }
  }

  std::optional<relib::common::TempDir> owned_run_dir;
  if (run_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmp_dir = tmp && *tmp ? tmp : "/tmp";
    // What SIGKILLed relibds left there: their workers and run dirs.
    relib::daemon::RemoveStaleRunDirs(tmp_dir);
    auto created = relib::common::TempDir::Create(tmp_dir, "relibd-");
    if (!created.ok()) {
      spdlog::critical("phase=startup {}", created.status().ToString());
      return 1;
    }
    owned_run_dir.emplace(std::move(created).value());
    run_dir = owned_run_dir->path();
  } else {
    std::error_code ignored;
    std::filesystem::create_directories(run_dir, ignored);
    if (absl::Status cleaned = relib::daemon::CleanUpRunDir(run_dir); !cleaned.ok()) {
      spdlog::critical("phase=startup {}", cleaned.ToString());
      return 1;
    }
  }
  if (absl::Status claimed = relib::daemon::ClaimRunDir(run_dir, owned_run_dir.has_value()); !claimed.ok()) {
    spdlog::warn("phase=startup {}; a successor cannot clean up after this relibd", claimed.ToString());
  }
  for (const std::string& limit : worker_limits) {
    if (absl::Status added = options.worker.limits.Add(limit); !added.ok()) {
      spdlog::critical("phase=startup {}", std::string(added.message()));
      return 2;
    }
  }
  std::vector<relib::common::UniqueFd> preopened;
  for (const std::string& spec : preopen_tcp) {
    auto socket = relib::daemon::ListenTcp(spec);
    if (!socket.ok()) {
      spdlog::critical("phase=startup --preopen-tcp {}: {}", spec, std::string(socket.status().message()));
      return 2;
    }
    options.preopened_fds[socket->module][socket->key] = socket->fd.get();
    preopened.push_back(std::move(socket->fd));
  }
  if (!worker_user.empty() && ::geteuid() != 0) {
    spdlog::critical("phase=startup --worker-user needs relibd to run as root (workers run as relibd's user)");
    return 2;
  }
  if (::geteuid() == 0 && worker_user != "root" && worker_user != "0") {
    std::string name = worker_user.empty() ? "relib-worker" : worker_user;
    auto user = relib::daemon::ResolveUser(name);
    if (!user.ok() && worker_user.empty()) {
      spdlog::warn("phase=startup user relib-worker does not exist (see systemd/relibd.sysusers.conf); workers run "
                   "as nobody");
      name = "nobody";
      user = relib::daemon::ResolveUser(name);
    }
    if (!user.ok()) {
      spdlog::critical("phase=startup --worker-user: {}", std::string(user.status().message()));
      return 2;
    }
    if (user->first == 0) {
      spdlog::warn("phase=startup --worker-user {} is root: modules run as root", name);
    } else {
      options.worker.run_as = relib::common::SpawnOptions::Credentials{user->first, user->second, {}};
      // The worker reaches its scratch dir inside the run dir: search only,
      // no listing.
      struct stat st {};
      if (::stat(run_dir.c_str(), &st) == 0 && (st.st_mode & S_IXOTH) == 0) ::chmod(run_dir.c_str(), (st.st_mode & 07777) | S_IXOTH);
      spdlog::info("phase=startup workers run as {} (uid {}, gid {})", name, user->first, user->second);
    }
  } else if (::geteuid() == 0) {
    spdlog::warn("phase=startup --worker-user root: modules run as root");
  }
  if (::access(worker_path.c_str(), X_OK) != 0) {
    spdlog::critical("phase=startup worker executable {} is missing or not executable (pass --worker)",
                     worker_path);
    return 1;
  }
  if (passed.api_socket) {
    spdlog::info("phase=startup socket activation: serving the listening socket systemd passed ({})",
                 UnixAddressOf(passed.api_socket->get()));
  } else if (!PrepareSocketPath(socket_path)) {
    return 1;
  }
  for (const std::string& name : passed.ignored) spdlog::warn("phase=startup passed fd {} not used; closed", name);
  relib::daemon::SocketOptions socket_options;
  std::vector<gid_t> view_gids, control_gids;
  {
    auto startup_error = [](const std::string& what) {
      spdlog::critical("phase=startup {}", what);
      return 2;
    };
    char* end = nullptr;
    unsigned long mode = std::strtoul(socket_mode.c_str(), &end, 8);
    if (socket_mode.empty() || *end != '\0' || mode > 0777) {
      return startup_error("--socket-mode " + socket_mode + " is not an octal mode like 0660");
    }
    socket_options.mode = static_cast<mode_t>(mode);
    if (!socket_owner.empty()) {
      auto owner = relib::daemon::ResolveUser(socket_owner);
      if (!owner.ok()) return startup_error("--socket-owner: " + std::string(owner.status().message()));
      socket_options.owner = owner->first;
    }
    if (!socket_group.empty()) {
      auto group = relib::daemon::ResolveGroup(socket_group);
      if (!group.ok()) return startup_error("--socket-group: " + std::string(group.status().message()));
      socket_options.group = *group;
    }
    for (auto [names, gids, flag] : {std::tuple{&view_groups, &view_gids, "--view-group"},
                                     std::tuple{&control_groups, &control_gids, "--control-group"}}) {
      for (const std::string& name : *names) {
        auto gid = relib::daemon::ResolveGroup(name);
        if (!gid.ok()) return startup_error(std::string(flag) + ": " + std::string(gid.status().message()));
        gids->push_back(*gid);
      }
    }
  }
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
  // Destroyed (its threads joined) before `io`, which they post to.
  relib::daemon::ReapThreads reap_threads;
  auto work = boost::asio::make_work_guard(io);
  relib::daemon::EventBus events;
  options.worker.worker_path = worker_path;
  options.worker.reap_threads = &reap_threads;
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
  std::unique_ptr<relib::daemon::ModuleTable> table;
  if (state_dir.empty()) {
    spdlog::warn("phase=startup no state dir (--state-dir, or StateDirectory= under systemd): modules and their state "
                 "are kept in memory only; a restart of relibd loses them");
  } else {
    auto opened = relib::daemon::ModuleTable::Open(state_dir);
    if (!opened.ok()) {
      spdlog::critical("phase=startup {}", opened.status().ToString());
      return 1;
    }
    table = std::move(opened).value();
    options.table = table.get();
  }
  options.on_fd_stored = [&notifier](const std::string& module, const std::string& key, int fd) {
    notifier.StoreFd(module, key, fd);
  };
  options.on_fd_dropped = [&notifier](const std::string& module, const std::string& key) {
    notifier.RemoveFd(module, key);
  };

  // Stops main: a signal number, or -1 when no worker can start.
  std::promise<int> stop_signal;
  std::once_flag stop_once;
  auto stop = [&](int why) { std::call_once(stop_once, [&] { stop_signal.set_value(why); }); };
  options.on_fatal = [&](const std::string&) { stop(-1); };
  auto allowed_dirs = relib::daemon::ModuleDirs::Create(module_dirs, ::geteuid());
  if (!allowed_dirs.ok()) {
    spdlog::critical("phase=startup {}", std::string(allowed_dirs.status().message()));
    return 2;
  }
  if (::geteuid() == 0 && module_dirs.empty()) {
    spdlog::warn("phase=startup relibd runs as root with no --allow-module-dir: every load will be refused");
  }
  options.module_dirs = &*allowed_dirs;
  relib::daemon::Supervisor supervisor(io, options, events);
  auto watcher = std::make_unique<relib::daemon::ModuleWatcher>(supervisor, std::chrono::milliseconds(watch_debounce_ms));
  supervisor.set_change_listener([w = watcher.get()] { w->Sync(); });
  for (auto& stored : passed.stored) supervisor.AdoptStoredFd(stored.module, stored.key, std::move(stored.fd));

  // One server per role: the server a connection is handed to is its
  // authorization (see daemon/peer_listener.h).
  relib::daemon::AccessPolicy access(::geteuid(), view_gids, control_gids);
  relib::daemon::PeerRegistry peers;
  relib::daemon::RpcService control_service(supervisor, events, relib::daemon::Role::kControl, &peers);
  relib::daemon::RpcService view_service(supervisor, events, relib::daemon::Role::kView, &peers);
  relib::daemon::RpcService no_service(supervisor, events, relib::daemon::Role::kNone, &peers);

  // Config reloads: SIGHUP and the ReloadConfig RPC (README "Configuration file").
  std::unique_ptr<relib::daemon::ConfigApplier> config_applier;
  if (config) {
    config_applier = std::make_unique<relib::daemon::ConfigApplier>(supervisor, events, std::move(*config));
    config_applier->set_reload_hooks([&notifier] { notifier.Reloading(); },
                                     [&notifier, &supervisor] {
                                       notifier.Ready(relib::daemon::StatusLine(supervisor.Status()));
                                     });
    for (auto* service : {&control_service, &view_service, &no_service}) {
      service->set_config_reloader([a = config_applier.get()] { return a->Reload("ReloadConfig RPC"); });
    }
  }

  // Signals are taken from here on (a SIGTERM during the restore waits for it).
  // SIGHUP is never fatal: it reloads the config file, if there is one.
  boost::asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
  std::function<void()> wait_for_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int signal) {
      if (ec) return;
      if (signal == SIGHUP) {
        ReloadConfig(config_applier.get(), "SIGHUP");
        wait_for_signal();
        return;
      }
      stop(signal);
    });
  };
  wait_for_signal();
  std::thread io_thread([&] {
    // Named so its wakeups can be told from gRPC's threads (tests, bench).
    ::pthread_setname_np(::pthread_self(), "relibd-io");
    io.run();
  });

  // The persistent table comes back before relibd serves or says READY.
  if (table) {
    auto entries = table->Entries();
    if (!entries.empty()) {
      notifier.Status(fmt::format("restoring {} modules", entries.size()));
      auto [restored, failed] = supervisor.Restore(entries);
      spdlog::info("phase=restore {} modules restored, {} failed (from {})", restored, failed, table->directory());
    }
  }

  // relibd's own health service, not gRPC's default (see daemon/health_service.h).
  relib::daemon::HealthService control_health, view_health;
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ResourceQuota quota("relibd");
  quota.SetMaxThreads(max_rpc_threads);
  const int idle_pollers = MaxIdlePollers(max_rpc_threads);
  std::unique_ptr<grpc::ServerCompletionQueue> control_queue, view_queue, no_queue;
  std::unique_ptr<grpc::Server> control_server =
      BuildServer(&control_service, max_message_bytes, &control_health, quota, idle_pollers, &control_queue);
  std::unique_ptr<grpc::Server> view_server =
      BuildServer(&view_service, max_message_bytes, &view_health, quota, idle_pollers, &view_queue);
  std::unique_ptr<grpc::Server> no_server =
      BuildServer(&no_service, max_message_bytes, nullptr, quota, idle_pollers, &no_queue);
  // Each server's Events streams; destroyed only after its server shut down.
  std::vector<std::unique_ptr<relib::daemon::EventStreams>> event_streams;
  auto stop_servers = [&](std::chrono::system_clock::time_point deadline) {
    for (grpc::Server* server : {control_server.get(), view_server.get(), no_server.get()}) {
      if (server) server->Shutdown(deadline);
    }
    event_streams.clear();
  };
  auto fail_start = [&](const std::string& why) {
    spdlog::critical("phase=startup {}", why);
    stop_servers(std::chrono::system_clock::now());
    supervisor.Shutdown();
    work.reset();
    io.stop();
    io_thread.join();
    return 1;
  };
  if (!control_server || !view_server || !no_server) return fail_start("cannot start the gRPC servers");
  for (auto [service, queue] : {std::pair{&control_service, &control_queue}, std::pair{&view_service, &view_queue},
                                std::pair{&no_service, &no_queue}}) {
    event_streams.push_back(std::make_unique<relib::daemon::EventStreams>(
        *service, events, std::move(*queue),
        [service = service](grpc::ServerContext* context) { return service->AdmitEvents(context); },
        relib::daemon::RpcService::kMaxEventBacklog));
  }
  // The socket systemd passed, or our own.
  std::string probe_target = "unix:" + socket_path;
  absl::StatusOr<relib::common::UniqueFd> listening;
  // A socket systemd passed is the socket unit's: its file stays when relibd stops.
  const bool own_socket = !passed.api_socket;
  if (passed.api_socket) {
    probe_target = UnixAddressOf(passed.api_socket->get());
    listening = std::move(*passed.api_socket);
  } else {
    listening = relib::daemon::BindUnixSocket(socket_path, socket_options);
  }
  if (!listening.ok()) {
    return fail_start(fmt::format("cannot listen on unix:{}: {}", socket_path, listening.status().ToString()));
  }
  auto listener = relib::daemon::PeerListener::Start(std::move(listening).value(), access, peers,
                                                     {control_server.get(), view_server.get(), no_server.get()});
  if (!listener.ok()) return fail_start(listener.status().ToString());
  spdlog::info("phase=startup listening on {} worker={} run-dir={} state={} ({} bytes)", probe_target, worker_path,
               run_dir, (*state_store)->location(), (*state_store)->capacity());
  // The file's modules, applied as a config reload against what runs now (after the
  // restore of the persistent module table: README "Ownership"), before READY.
  if (config_applier) config_applier->Apply();
  notifier.Ready(relib::daemon::StatusLine(supervisor.Status()));
  // WATCHDOG=1 only while relibd answers over its own socket; STATUS= kept current.
  std::optional<relib::daemon::SelfProbe> probe;
  if (notifier.enabled() && !probe_target.empty()) {
    auto interval = notifier.WatchdogInterval()
                        ? std::chrono::duration_cast<std::chrono::milliseconds>(*notifier.WatchdogInterval() / 2)
                        : std::chrono::milliseconds(10000);
    probe.emplace(probe_target, std::max(interval, std::chrono::milliseconds(50)), notifier);
  }

  int signal = stop_signal.get_future().get();
  {
    // No SIGHUP may start a config reload from here on (the applier goes away
    // below): cancel the wait on the io thread, where its handler runs.
    std::promise<void> cancelled;
    boost::asio::post(io, [&] {
      boost::system::error_code ignored_error;
      signals.cancel(ignored_error);
      cancelled.set_value();
    });
    cancelled.get_future().wait();
  }
  probe.reset();
  if (signal < 0) {
    spdlog::critical("phase=shutdown no relib-worker can start; exiting (code 3) so the service manager can take over");
    notifier.Stopping("no relib-worker can start");
  } else {
    spdlog::info("phase=shutdown signal {} received", signal);
    notifier.Stopping("stopping: modules run before_unload");
    // A stop is not an unload: every module stays in the table and comes
    // back at the next start, reading what its before_unload saved.
    supervisor.GracefulStop(std::chrono::milliseconds(stop_timeout_ms));
  }
  // Workers first: RPCs waiting on them then fail fast instead of holding up
  // the server's shutdown; event streams end; idle client channels are not
  // waited for beyond a short grace.
  for (auto* health : {&control_health, &view_health}) health->Shutdown();  // NOT_SERVING from now on
  supervisor.Shutdown();
  relib::daemon::KillAdoptedProcesses(std::chrono::milliseconds(2000));
  events.Close();
  listener->reset();
  stop_servers(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  config_applier.reset();  // after the supervisor (a reload in progress fails fast) and the last RPC
  // After the workers (a reload it runs now fails fast) and after the last
  // RPC (which may still notify it of a change).
  watcher.reset();
  work.reset();
  io.stop();
  io_thread.join();
  std::error_code ignored;
  if (own_socket) std::filesystem::remove(socket_path, ignored);
  spdlog::info("phase=shutdown stopped");
  return signal < 0 ? 3 : 0;
}
