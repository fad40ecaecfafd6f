#include "tests/relibd_process.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "tests/test_paths.h"

namespace relib::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

namespace {

CommandResult Run(const std::vector<std::string>& argv, const std::string& input,
                  const std::optional<common::SpawnOptions::Credentials>& user) {
  CommandResult result;
  auto dir = common::TempDir::Create("/tmp", "relib-cmd-");
  if (!dir.ok()) return result;
  std::string in_path = dir->path() + "/in", out_path = dir->path() + "/out", err_path = dir->path() + "/err";
  { std::ofstream(in_path) << input; }
  common::UniqueFd in(::open(in_path.c_str(), O_RDONLY | O_CLOEXEC));
  common::UniqueFd out(::open(out_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  common::UniqueFd err(::open(err_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  common::SpawnOptions options;
  options.argv = argv;
  options.fds = {{in.get(), 0}, {out.get(), 1}, {err.get(), 2}};
  options.credentials = user;
  auto child = common::ChildProcess::Spawn(options);
  if (!child.ok()) {
    result.err = child.status().ToString();
    return result;
  }
  auto status = child->Wait();
  if (status.ok()) {
    result.exit_code = status->kind == common::ExitStatus::Kind::kExited ? status->code : -status->code;
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

}  // namespace

CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& input) {
  return Run(argv, input, std::nullopt);
}

CommandResult RunCommandAs(const common::SpawnOptions::Credentials& user, const std::vector<std::string>& argv,
                           const std::string& input) {
  return Run(argv, input, user);
}

absl::StatusOr<std::unique_ptr<RelibdProcess>> RelibdProcess::Start(const std::vector<std::string>& extra_args,
                                                                   bool default_module_dirs,
                                                                   const std::string& relibd_path) {
  RelibdStartOptions start;
  start.args = extra_args;
  start.default_module_dirs = default_module_dirs;
  start.relibd = relibd_path;
  return Start(start);
}

absl::StatusOr<std::unique_ptr<RelibdProcess>> RelibdProcess::Start(const RelibdStartOptions& start) {
  const std::vector<std::string>& extra_args = start.args;
  auto dir = common::TempDir::Create("/tmp", "relibd-test-");
  if (!dir.ok()) return dir.status();
  std::string socket = dir->path() + "/relibd.sock";
  std::string log = dir->path() + "/relibd.log";
  common::UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  common::UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  common::SpawnOptions options;
  options.argv = {start.relibd, "--socket", socket, "--log-level", "debug"};
  bool run_dir_given = std::find(extra_args.begin(), extra_args.end(), "--run-dir") != extra_args.end();
  if (!start.own_run_dir && !run_dir_given) options.argv.insert(options.argv.end(), {"--run-dir", dir->path()});
  // The real worker unless the test names another.
  if (std::find(extra_args.begin(), extra_args.end(), "--worker") == extra_args.end()) {
    options.argv.insert(options.argv.end(), {"--worker", kWorkerPath});
  }
  // Many tests' modules write marker files into the test's private dir, as
  // root workers can; the unprivileged default has tests of its own
  // (worker_user_test.cc), which pass --worker-user.
  if (std::find(extra_args.begin(), extra_args.end(), "--worker-user") == extra_args.end()) {
    options.argv.insert(options.argv.end(), {"--worker-user", "root"});
  }
  if (start.default_module_dirs) {
    options.argv.insert(options.argv.end(), {"--allow-module-dir", kBuildDir, "--allow-module-dir", dir->path()});
  }
  options.argv.insert(options.argv.end(), extra_args.begin(), extra_args.end());
  if (!start.shell_prefix.empty()) {
    options.argv.insert(options.argv.begin(), {"/bin/sh", "-c", start.shell_prefix + "; exec \"$0\" \"$@\""});
  }
  options.fds = {{null_fd.get(), 0}, {log_fd.get(), 1}, {log_fd.get(), 2}};
  options.fds.insert(options.fds.end(), start.fds.begin(), start.fds.end());
  options.extra_env = start.env;
  if (start.journal_stream) {
    struct stat st{};
    ::fstat(log_fd.get(), &st);
    options.extra_env.push_back("JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino));
  }
  auto process = common::ChildProcess::Spawn(options);
  if (!process.ok()) return process.status();
  std::unique_ptr<RelibdProcess> relibd(
      new RelibdProcess(std::move(dir).value(), std::move(process).value(), socket));
  if (!start.connect_to.empty()) socket = relibd->socket_ = start.connect_to;
  auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(20);
  // Connect only once the socket exists: a channel that failed once backs
  // off for a second or more before trying again.
  while (!std::filesystem::exists(socket) && std::chrono::system_clock::now() < deadline) {
    auto exited = relibd->process_.TryReap();
    if (exited.ok() && exited->has_value()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  while (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::milliseconds(100))) {
    auto exited = relibd->process_.TryReap();
    if (exited.ok() && exited->has_value()) {
      return absl::InternalError("relibd exited at startup: " + (*exited)->ToString() + "\n" + relibd->Log());
    }
    if (std::chrono::system_clock::now() > deadline) {
      return absl::DeadlineExceededError("relibd did not start listening:\n" + relibd->Log());
    }
  }
  relibd->stub_ = v1::Relibd::NewStub(channel);
  return relibd;
}

RelibdProcess::~RelibdProcess() {
  if (!process_.reaped()) Stop();
}

common::ExitStatus RelibdProcess::Stop() { return process_.Terminate(10000); }

std::string RelibdProcess::Log() const { return ReadFile(dir_.path() + "/relibd.log"); }

CommandResult RelibdProcess::Ctl(const std::vector<std::string>& args, const std::string& input) const {
  std::vector<std::string> argv = {kRelibctlPath, "--socket", socket_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, input);
}

CommandResult RelibdProcess::CtlAs(const common::SpawnOptions::Credentials& user,
                                   const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {kRelibctlPath, "--socket", socket_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommandAs(user, argv);
}

}  // namespace relib::testing
