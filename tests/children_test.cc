// Child processes of modules end to end: real relibd, real workers, a test
// module that forks, posix_spawns, runs system() and daemonizes; the
// processes are checked by pid in /proc.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;

// /proc/PID/stat fields this test needs: state and start time (which tells a
// recycled pid apart). nullopt if there is no such process.
struct Stat {
  char state = '?';
  unsigned long long start_time = 0;
};
std::optional<Stat> ReadStat(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(file, text)) return std::nullopt;
  size_t paren = text.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream rest(text.substr(paren + 2));
  Stat stat;
  rest >> stat.state;
  std::string skip;
  for (int field = 4; field < 22; ++field) rest >> skip;  // ppid .. itrealvalue
  rest >> stat.start_time;
  return stat;
}

class ChildrenTest : public RelibdTest {
 protected:
  // Whatever a test leaves behind (a failing test, or the base behaviour)
  // is killed here, by pid and only if it is still the same process.
  void TearDown() override {
    RelibdTest::TearDown();
    for (const auto& [pid, start_time] : started_) {
      auto stat = ReadStat(pid);
      if (stat && stat->start_time == start_time) ::kill(pid, SIGKILL);
    }
  }

  // Calls an export that starts a process and returns its pid.
  pid_t Start(const std::string& module, const std::string& export_name, const std::string& input = "") {
    std::string out = Call(module, export_name, input);
    pid_t pid = std::atoi(out.c_str());
    EXPECT_GT(pid, 0) << export_name << ": " << out;
    if (pid <= 0) return -1;
    auto stat = ReadStat(pid);
    EXPECT_TRUE(stat.has_value()) << export_name << " pid " << pid << " is not running";
    if (stat) started_[pid] = stat->start_time;
    return pid;
  }

  // fork, posix_spawn, system("... &") and double fork + setsid.
  std::vector<pid_t> StartAll(const std::string& module) {
    return {Start(module, "fork_sleep"), Start(module, "spawn_sleep"),
            Start(module, "system_sleep", relibd_->dir() + "/system.pid"), Start(module, "daemonize")};
  }

  // Alive: the same process is there and not a zombie.
  bool Alive(pid_t pid) {
    auto stat = ReadStat(pid);
    return stat && stat->start_time == started_[pid] && stat->state != 'Z';
  }
  // Gone from /proc (killed and reaped), or a different process by now.
  bool Gone(pid_t pid) {
    auto stat = ReadStat(pid);
    return !stat || stat->start_time != started_[pid];
  }
  // Waits up to `timeout` for every pid to be gone; returns those still there.
  std::vector<pid_t> WaitGone(const std::vector<pid_t>& pids, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::vector<pid_t> left;
    do {
      left.clear();
      for (pid_t pid : pids) {
        if (!Gone(pid)) left.push_back(pid);
      }
      if (left.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < deadline);
    return left;
  }
  static std::map<pid_t, std::string> Reported(const v1::UnloadReport& report) {
    std::map<pid_t, std::string> children;
    for (const auto& child : report.children()) children[child.pid()] = child.command_line();
    return children;
  }

  std::map<pid_t, unsigned long long> started_;
};

const std::map<pid_t, std::string> Expected(const std::vector<pid_t>& pids) {
  return {{pids[0], "sleep 1000"}, {pids[1], "sleep 1001"}, {pids[2], "sleep 1002"}, {pids[3], "sleep 1003"}};
}

TEST_F(ChildrenTest, ReportPolicyListsChildrenAndLeavesThemRunning) {
  ASSERT_TRUE(Load("c", k_children).ok());
  std::vector<pid_t> pids = StartAll("c");
  v1::UnloadResponse response;
  grpc::Status status = Unload("c", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const v1::UnloadReport& report = response.report();
  EXPECT_FALSE(report.children_killed());
  std::map<pid_t, std::string> reported = Reported(report);
  for (const auto& [pid, command_line] : Expected(pids)) {
    EXPECT_EQ(reported[pid], command_line) << "pid " << pid << "\n" << report.DebugString();
    EXPECT_TRUE(Alive(pid)) << command_line;
  }
  EXPECT_EQ(report.children_size(), 4) << report.DebugString();
}

TEST_F(ChildrenTest, KillPolicyKillsAndReapsChildren) {
  v1::ModuleOptions options;
  options.set_child_policy(v1::CHILD_POLICY_KILL);
  ASSERT_TRUE(Load("c", k_children, nullptr, options).ok());
  std::vector<pid_t> pids = StartAll("c");
  v1::UnloadResponse response;
  grpc::Status status = Unload("c", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(response.report().children_killed());
  std::map<pid_t, std::string> reported = Reported(response.report());
  for (const auto& [pid, command_line] : Expected(pids)) EXPECT_EQ(reported[pid], command_line) << "pid " << pid;
  // Killed and reaped by the worker: no zombie left either.
  EXPECT_THAT(WaitGone(pids, std::chrono::milliseconds(2000)), ::testing::IsEmpty());
}

TEST_F(ChildrenTest, WorkerCrashTakesEveryProcessItStartedWithIt) {
  ASSERT_TRUE(Load("c", k_children).ok());
  std::vector<pid_t> pids = StartAll("c");
  pids.push_back(Start("c", "popen_sleep"));
  grpc::Status status;
  Call("c", "crash", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(WaitGone(pids, std::chrono::milliseconds(5000)), ::testing::IsEmpty());
  // The group recovers: the module is loaded again in a new worker.
  EXPECT_EQ(WaitForState("c", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("c", "ping"), "pong");
}

TEST_F(ChildrenTest, StoppingRelibdLeavesNoProcessAWorkerStarted) {
  ASSERT_TRUE(Load("c", k_children).ok());
  ASSERT_TRUE(Load("d", k_children, nullptr, {}, "other").ok());
  std::vector<pid_t> pids = StartAll("c");
  std::vector<pid_t> more = StartAll("d");
  pids.insert(pids.end(), more.begin(), more.end());
  common::ExitStatus exit = relibd_->Stop();
  EXPECT_TRUE(exit.Success()) << exit.ToString();
  EXPECT_THAT(WaitGone(pids, std::chrono::milliseconds(5000)), ::testing::IsEmpty());
}

TEST_F(ChildrenTest, StoppedWorkerLeavesNothingBehindEvenAfterAReportingUnload) {
  // Report policy: the children outlive the unload, but not their worker.
  ASSERT_TRUE(Load("c", k_children, nullptr, {}, "g").ok());
  std::vector<pid_t> pids = StartAll("c");
  ASSERT_TRUE(Unload("c").ok());
  for (pid_t pid : pids) EXPECT_TRUE(Alive(pid)) << pid;
  // A deadline overrun gets the worker killed: what it left dies with it.
  v1::ModuleOptions options;
  options.set_call_deadline_ms(300);
  ASSERT_TRUE(Load("v", k_versioned_v1, nullptr, options, "g").ok());
  grpc::Status status;
  Call("v", "hang", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  EXPECT_THAT(WaitGone(pids, std::chrono::milliseconds(5000)), ::testing::IsEmpty());
}

TEST_F(ChildrenTest, ChildrenTheModuleWaitsForAreNeverReapedBehindItsBack) {
  ASSERT_TRUE(Load("c", k_children).ok());
  pid_t pid = Start("c", "popen_sleep");
  EXPECT_EQ(Call("c", "ping"), "pong");  // scans for children after each call
  ::kill(pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Call("c", "ping"), "pong");
  EXPECT_EQ(Call("c", "pclose"), "signal 9");  // pclose reaped it itself
  EXPECT_EQ(Call("c", "system_true"), "0");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("c", &response).ok());
  EXPECT_EQ(response.report().children_size(), 0) << response.report().DebugString();
}

TEST_F(ChildrenTest, RelibctlChildPolicyKillPrintsAndKillsChildren) {
  CommandResult r = relibd_->Ctl({"load", "c", k_children, "--child-policy", "kill"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = relibd_->Ctl({"call", "c", "fork_sleep"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  pid_t pid = std::atoi(r.out.c_str());
  ASSERT_GT(pid, 0) << r.out;
  if (auto stat = ReadStat(pid)) started_[pid] = stat->start_time;
  r = relibd_->Ctl({"unload", "c"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("child processes left running: 1 (killed)"),
                           HasSubstr("pid " + std::to_string(pid) + ": sleep 1000")));
  EXPECT_THAT(WaitGone({pid}, std::chrono::milliseconds(2000)), ::testing::IsEmpty());
  r = relibd_->Ctl({"load", "c", k_children, "--child-policy", "maybe"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("--child-policy"));
}

}  // namespace
}  // namespace relib::testing
