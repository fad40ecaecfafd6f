// relibctl subcommands, one function each. Each prints its result to stdout
// (text or JSON), one error line to stderr, and returns the process exit code.
#ifndef RELIB_CLIENT_COMMANDS_H_
#define RELIB_CLIENT_COMMANDS_H_

#include <cstdint>
#include <string>

#include "common/message_limits.h"

namespace relib::client {

// Exit codes shared by every subcommand. Errors go to stderr: one line, or
// under --json one object {"error": text, "code": gRPC code name, "exit_code": n}.
inline constexpr int kExitOk = 0;
inline constexpr int kExitModuleError = 1;  // the daemon answered with an error
inline constexpr int kExitUsage = 2;        // bad command line
inline constexpr int kExitUnreachable = 3;  // no daemon on the socket
// relibd refused: the caller lacks a role, cannot open the socket, or the
// module's file or directory is not allowed (PERMISSION_DENIED).
inline constexpr int kExitPermissionDenied = 4;

struct ClientOptions {
  std::string socket;
  bool json = false;
  int connect_timeout_ms = 3000;
  // Largest gRPC message sent or received; relibd has the same flag and
  // default (common/message_limits.h).
  int max_message_mb = common::kDefaultMaxMessageMb;
  // Deadline of every RPC in seconds (0 = none). For `events`, how long to follow.
  double timeout_s = 0;
};

// Unload checks and policies given on the command line (see ModuleOptions in
// relibd.proto). `set` tells whether any was given (reload keeps the module's
// options otherwise).
struct ModuleFlags {
  bool set = false;
  uint32_t thread_grace_ms = 0;
  std::string leak_policy = "report";     // report | free
  std::string fd_policy = "report";       // report | close
  std::string child_policy = "report";    // report | kill
  std::string mapping_policy = "report";  // report | unmap
  std::string signal_policy = "restore";  // restore | refuse
  std::string dlopen_policy = "report";   // report | close
  bool capture_sites = false;
  uint32_t load_deadline_ms = 0;
  uint32_t on_load_deadline_ms = 0;
  uint32_t call_deadline_ms = 0;
  uint32_t before_unload_deadline_ms = 0;
  uint32_t unload_deadline_ms = 0;
  uint32_t max_concurrent_calls = 0;
  uint32_t max_queued_calls = 0;
  uint32_t queue_deadline_ms = 0;
};

// Prints an error as described above and returns `exit_code`.
int PrintError(const ClientOptions& options, const std::string& text, const std::string& code, int exit_code);

// `worker` names the isolation group ("" = default).
int RunLoad(const ClientOptions& options, const std::string& name, const std::string& path,
            const ModuleFlags& flags, const std::string& worker, bool watch = false);
// Turns watch-and-reload of NAME on (or off).
int RunWatch(const ClientOptions& options, const std::string& name, bool off);
int RunReload(const ClientOptions& options, const std::string& name, const std::string& path, bool force,
              bool staged, const ModuleFlags& flags);
// Reloads every module relibd knows from its current path, one after the
// other; fails (1) if any reload failed, after trying them all.
int RunReloadAll(const ClientOptions& options, bool force, bool staged, const ModuleFlags& flags);
// relibctl's and relibd's versions and the module ABI; prints relibctl's even
// when relibd is unreachable (then exits 3).
int RunVersion(const ClientOptions& options);
int RunUnload(const ClientOptions& options, const std::string& name, bool force);
// `input` "-" reads standard input. Output bytes go to stdout unchanged.
int RunCall(const ClientOptions& options, const std::string& name, const std::string& export_name,
            const std::string& input);
int RunStatus(const ClientOptions& options);
// Asks relibd to read its config file again and apply it; prints each
// module's outcome. Fails (1) if the file was refused or any module failed.
int RunReloadConfig(const ClientOptions& options);
// Prints events as they happen; stops after `count` events if count > 0.
int RunEvents(const ClientOptions& options, int count);

}  // namespace relib::client

#endif  // RELIB_CLIENT_COMMANDS_H_
