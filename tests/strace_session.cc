#include "tests/strace_session.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace relib::testing {
namespace {

// True if every thread of `pid` has `tracer` as its TracerPid.
bool AllThreadsTracedBy(pid_t pid, pid_t tracer) {
  const std::string tracer_line = "TracerPid:\t" + std::to_string(tracer);
  int threads = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream status(entry.path() / "status");
    std::string line;
    bool traced = false;
    while (std::getline(status, line)) {
      if (line.rfind("TracerPid:", 0) == 0) {
        traced = line == tracer_line;
        break;
      }
    }
    if (!traced) return false;
    ++threads;
  }
  return !error && threads > 0;
}

}  // namespace

std::optional<StraceSession> StraceSession::Attach(pid_t pid, const std::vector<std::string>& options) {
  if (::access("/usr/bin/strace", X_OK) != 0) return std::nullopt;
  static int sessions = 0;
  const std::string out = std::filesystem::temp_directory_path() /
                          ("relib-strace-" + std::to_string(::getpid()) + "-" + std::to_string(++sessions));
  std::vector<std::string> args = {"/usr/bin/strace", "-f"};
  args.insert(args.end(), options.begin(), options.end());
  args.insert(args.end(), {"-o", out, "-p", std::to_string(pid)});
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t tracer = 0;
  if (::posix_spawn(&tracer, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return std::nullopt;
  // A tracer that cannot attach exits.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!AllThreadsTracedBy(pid, tracer)) {
    int status = 0;
    if (::waitpid(tracer, &status, WNOHANG) == tracer || std::chrono::steady_clock::now() > deadline) {
      ::kill(tracer, SIGKILL);
      ::waitpid(tracer, &status, 0);
      std::filesystem::remove(out);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return StraceSession(tracer, out);
}

StraceSession::StraceSession(StraceSession&& other) noexcept : tracer_(other.tracer_), out_(std::move(other.out_)) {
  other.tracer_ = 0;
}

StraceSession::~StraceSession() {
  if (tracer_ <= 0) return;
  ::kill(tracer_, SIGKILL);
  int status = 0;
  ::waitpid(tracer_, &status, 0);
  std::error_code ignored;
  std::filesystem::remove(out_, ignored);
}

std::optional<std::string> StraceSession::Stop() {
  if (tracer_ <= 0) return std::nullopt;  // stopped already
  ::kill(tracer_, SIGINT);
  int status = 0;
  ::waitpid(tracer_, &status, 0);
  tracer_ = 0;
  std::ifstream in(out_);
  std::stringstream text;
  text << in.rdbuf();
  std::error_code ignored;
  std::filesystem::remove(out_, ignored);
  // Ended by the SIGINT (or exited 0): anything else means it could not trace.
  const bool stopped = (WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) ||
                       (WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 128 + SIGINT));
  if (!stopped) return std::nullopt;
  return text.str();
}

}  // namespace relib::testing
