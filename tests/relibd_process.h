// Test harness: a real relibd process on a private socket, a gRPC stub to
// it, and a way to run the real relibctl against it.
#ifndef RELIB_TESTS_RELIBD_PROCESS_H_
#define RELIB_TESTS_RELIBD_PROCESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/child_process.h"
#include "common/temp_dir.h"
#include "relib/v1/relibd.grpc.pb.h"
#include "tests/test_paths.h"

namespace relib::testing {

struct CommandResult {
  int exit_code = -1;  // -signal if killed by a signal
  std::string out;
  std::string err;
};

// Runs `argv` with stdin from `input`, capturing stdout and stderr.
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& input = "");
// The same as another user (REQUIRES: the test runs as root).
CommandResult RunCommandAs(const common::SpawnOptions::Credentials& user, const std::vector<std::string>& argv,
                           const std::string& input = "");

// How to start relibd beyond its flags (the service tests need these).
struct RelibdStartOptions {
  std::vector<std::string> args;
  // Extra environment entries "K=V".
  std::vector<std::string> env;
  // Fds handed to relibd: {test's fd, fd number in relibd}.
  std::vector<std::pair<int, int>> fds;
  // Shell commands run right before relibd is exec'ed in the same process
  // (e.g. "ulimit -n 1024", "export LISTEN_PID=$$").
  std::string shell_prefix;
  // Set JOURNAL_STREAM to relibd's stderr (the log file), as systemd does.
  bool journal_stream = false;
  // Connect here instead of --socket (socket activation).
  std::string connect_to;
  // Leave out the harness's --run-dir (relibd then makes its own temp dir).
  bool own_run_dir = false;
  // Pass the build tree and the test's dir as --allow-module-dir.
  bool default_module_dirs = true;
  // The executable to run (an installed copy, say).
  std::string relibd = kRelibdPath;
};

class RelibdProcess {
 public:
  static absl::StatusOr<std::unique_ptr<RelibdProcess>> Start(const RelibdStartOptions& options);
  // Starts relibd with `extra_args` (`--worker` among them replaces the real
  // worker) and waits until it accepts connections. Unless
  // `default_module_dirs` is false, the build tree and the test's own dir are
  // passed as --allow-module-dir (relibd as root loads nothing without one).
  // Workers run as root (--worker-user root) unless `extra_args` has a
  // --worker-user (an empty one asks for relibd's default). `relibd` is the
  // executable to run (an installed copy, say).
  static absl::StatusOr<std::unique_ptr<RelibdProcess>> Start(const std::vector<std::string>& extra_args = {},
                                                             bool default_module_dirs = true,
                                                             const std::string& relibd = kRelibdPath);
  // SIGTERM, then waits for it to exit.
  ~RelibdProcess();

  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_.path(); }
  v1::Relibd::Stub& stub() { return *stub_; }
  common::ChildProcess& process() { return process_; }
  // relibd's log so far (stderr).
  std::string Log() const;

  // relibctl --socket <socket> args...
  CommandResult Ctl(const std::vector<std::string>& args, const std::string& input = "") const;
  // relibctl --socket <socket> args... as `user`.
  CommandResult CtlAs(const common::SpawnOptions::Credentials& user, const std::vector<std::string>& args) const;

  // Stops relibd with SIGTERM and returns how it ended.
  common::ExitStatus Stop();

 private:
  RelibdProcess(common::TempDir dir, common::ChildProcess process, std::string socket)
      : dir_(std::move(dir)), process_(std::move(process)), socket_(std::move(socket)) {}

  common::TempDir dir_;
  common::ChildProcess process_;
  std::string socket_;
  std::unique_ptr<v1::Relibd::Stub> stub_;
};

}  // namespace relib::testing

#endif  // RELIB_TESTS_RELIBD_PROCESS_H_
