// Child processes a module starts and leaves running: a forked child, a
// posix_spawn'ed one, a backgrounded grandchild of system(), a daemon that
// escaped by double fork + setsid, a popen'ed one. Each export returns the pid
// of the `sleep` it started (the duration tells them apart in command lines).
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include "relib/module.hpp"

extern char** environ;

namespace {

// A forked child runs worker code until it execs: wait until it is the
// sleep, so its command line is what the caller expects.
std::string Execed(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/cmdline";
  for (int i = 0; i < 500; ++i) {
    std::ifstream file(path);
    std::string argv0;
    std::getline(file, argv0, '\0');
    if (argv0 == "sleep") return std::to_string(pid);
    ::usleep(2000);
  }
  throw relib::Error("pid " + std::to_string(pid) + " did not exec sleep");
}

std::string ForkSleep(std::string_view) {
  pid_t pid = ::fork();
  if (pid < 0) throw relib::Error("fork failed");
  if (pid == 0) {
    ::execl("/bin/sleep", "sleep", "1000", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return Execed(pid);
}

std::string SpawnSleep(std::string_view) {
  pid_t pid = 0;
  char* argv[] = {const_cast<char*>("sleep"), const_cast<char*>("1001"), nullptr};
  if (::posix_spawnp(&pid, "sleep", nullptr, nullptr, argv, environ) != 0) throw relib::Error("posix_spawnp failed");
  return std::to_string(pid);
}

// system() runs sh, which backgrounds sleep and exits: the sleep is orphaned
// at once. Its pid comes back through the file named by `input`.
std::string SystemSleep(std::string_view input) {
  std::string path(input);
  std::string command = "sleep 1002 </dev/null >/dev/null 2>&1 & echo $! > '" + path + "'";
  if (std::system(command.c_str()) != 0) throw relib::Error("system failed");
  std::ifstream file(path);
  std::string pid;
  file >> pid;
  return Execed(std::atoi(pid.c_str()));
}

// The classic daemon: fork, setsid, fork again, the middle process exits.
std::string Daemonize(std::string_view) {
  int fds[2];
  if (::pipe(fds) != 0) throw relib::Error("pipe failed");
  pid_t middle = ::fork();
  if (middle < 0) throw relib::Error("fork failed");
  if (middle == 0) {
    ::setsid();
    pid_t daemon = ::fork();
    if (daemon == 0) {
      ::close(fds[0]);
      ::close(fds[1]);
      ::execl("/bin/sleep", "sleep", "1003", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    (void)!::write(fds[1], &daemon, sizeof(daemon));
    ::_exit(0);
  }
  ::close(fds[1]);
  pid_t daemon = -1;
  (void)!::read(fds[0], &daemon, sizeof(daemon));
  ::close(fds[0]);
  ::waitpid(middle, nullptr, 0);
  return Execed(daemon);
}

FILE* piped = nullptr;

// popen keeps its child until pclose, which waits for it: nobody else may.
// The shell prints its pid, then becomes the sleep.
std::string PopenSleep(std::string_view) {
  piped = ::popen("echo $$; exec sleep 1004", "r");
  if (piped == nullptr) throw relib::Error("popen failed");
  char line[32] = {};
  if (std::fgets(line, sizeof(line), piped) == nullptr) throw relib::Error("popen'ed shell said nothing");
  return Execed(std::atoi(line));
}

// pclose's view of its child: "exited N", "signal N", or "error" if somebody
// else reaped it.
std::string Pclose(std::string_view) {
  if (piped == nullptr) throw relib::Error("nothing popen'ed");
  int status = ::pclose(piped);
  piped = nullptr;
  if (status == -1) return "error";
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "exited " + std::to_string(WEXITSTATUS(status));
}

std::string SystemTrue(std::string_view) { return std::to_string(std::system("true")); }

std::string Ping(std::string_view) { return "pong"; }

std::string Crash(std::string_view) {
  ::raise(SIGSEGV);
  return "unreachable";
}

}  // namespace

RELIB_MODULE("children", nullptr, nullptr, relib::Export<ForkSleep>("fork_sleep"),
             relib::Export<SpawnSleep>("spawn_sleep"), relib::Export<SystemSleep>("system_sleep"),
             relib::Export<Daemonize>("daemonize"), relib::Export<PopenSleep>("popen_sleep"),
             relib::Export<Pclose>("pclose"), relib::Export<SystemTrue>("system_true"), relib::Export<Ping>("ping"),
             relib::Export<Crash>("crash"));
