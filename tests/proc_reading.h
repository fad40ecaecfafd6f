// Reads of a process's /proc files shared by the tests that count its
// threads' context switches or check its resource limits.
#ifndef RELIB_TESTS_PROC_READING_H_
#define RELIB_TESTS_PROC_READING_H_

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace relib::testing {

struct ThreadSwitches {
  std::string tid;
  std::string name;
  int64_t voluntary = 0;  // voluntary context switches so far
};

// Every thread of `pid` now, with its name and voluntary context switches.
inline std::vector<ThreadSwitches> VoluntarySwitchesByThread(pid_t pid) {
  std::vector<ThreadSwitches> threads;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream in(task.path() / "status");
    ThreadSwitches thread;
    thread.tid = task.path().filename().string();
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("Name:", 0) == 0) thread.name = line.substr(6);
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0) thread.voluntary = std::stoll(line.substr(24));
    }
    threads.push_back(std::move(thread));
  }
  return threads;
}

// The line of /proc/<pid>/limits that starts with `name` ("Max open files"),
// or "" if there is none.
inline std::string ProcLimit(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) == 0) return line;
  }
  return "";
}

}  // namespace relib::testing

#endif  // RELIB_TESTS_PROC_READING_H_
