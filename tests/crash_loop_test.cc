// Crash loops end to end: a stack overflow is blamed on its module like any
// SIGSEGV; a group whose worker keeps dying soon after each restore backs off
// more and more and ends failed within the restart-intensity limit, even
// when no module could be blamed; relibd and the other groups never notice;
// relibd exits (code 3) only when it cannot start any worker at all.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/temp_dir.h"
#include "tests/event_log.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

class CrashLoopTest : public RelibdTest {
 protected:
  bool RelibdAlive() { return !relibd_->process().TryReap().value().has_value(); }

  // Waits up to `limit` for relibd to exit on its own.
  std::optional<common::ExitStatus> WaitForRelibdExit(std::chrono::seconds limit) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      auto exited = relibd_->process().TryReap();
      if (exited.ok() && exited->has_value()) return **exited;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::nullopt;
  }

  static bool WorkerExited(const v1::Event& e) { return e.kind() == v1::EVENT_KIND_WORKER_EXITED; }
};

TEST_F(CrashLoopTest, OverflowInAnExportIsBlamedOnTheModule) {
  v1::LoadResponse bystander;
  ASSERT_TRUE(Load("bystander", k_versioned_v2, &bystander, {}, "other").ok());
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_overflow, &loaded).ok());
  EventLog events(relibd_->stub());

  grpc::Status status;
  Call("m", "overflow", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("killed by signal 11 (SIGSEGV)"),
                                            HasSubstr("in code of module 'm'"), HasSubstr("export 'overflow'")));

  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
  ASSERT_EQ(m.state(), v1::MODULE_STATE_LOADED) << m.last_error();
  EXPECT_NE(m.worker_pid(), loaded.module().worker_pid());
  EXPECT_EQ(m.recent_crashes(), 1u);
  EXPECT_EQ(Call("m", "ping"), "pong");
  EXPECT_EQ(Call("bystander", "version"), "v2");
  EXPECT_EQ(FindModule(Status(), "bystander")->worker_pid(), bystander.module().worker_pid());
  auto exits = events.All(WorkerExited);
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_THAT(exits[0].message(), AllOf(HasSubstr("SIGSEGV"), HasSubstr("in code of module 'm'")));
}

// Default restart policy: 3 restarts per 60 s window. Before the fix the
// overflowing thread was blamed on nobody, the group looped for ever and the
// daemon-wide limit stopped relibd after ~9 s, taking "other" with it.
TEST_F(CrashLoopTest, ThreadThatOverflowsAfterOnLoadEndsFailedAndNothingElseNotices) {
  v1::LoadResponse bystander;
  ASSERT_TRUE(Load("bystander", k_versioned_v2, &bystander, {}, "other").ok());
  auto start = Clock::now();
  EventLog events(relibd_->stub());
  ASSERT_TRUE(Load("m", k_thread_overflow, nullptr, {}, "looping").ok());

  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_FAILED);
  ASSERT_EQ(m.state(), v1::MODULE_STATE_FAILED) << m.last_error();
  EXPECT_EQ(m.recent_crashes(), 4u);
  EXPECT_THAT(m.last_error(), AllOf(HasSubstr("gave up"), HasSubstr("killed by signal 11 (SIGSEGV)"),
                                    HasSubstr("in code of module 'm'")));
  // Well past the old daemon-wide limit: relibd and the other group carry on.
  while (Clock::now() - start < std::chrono::seconds(12)) {
    ASSERT_TRUE(RelibdAlive()) << "relibd must stay up";
    EXPECT_EQ(Call("bystander", "version"), "v2");
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(FindModule(Status(), "bystander")->worker_pid(), bystander.module().worker_pid());
  auto exits = events.All(WorkerExited);
  EXPECT_EQ(exits.size(), 4u);
  for (const auto& e : exits) EXPECT_THAT(e.message(), HasSubstr("in code of module 'm'"));
  for (const auto& e : events.Events()) EXPECT_NE(e.module(), "bystander") << e.DebugString();
}

// Deaths nobody can be blamed for (the worker SIGKILLed while idle) still
// count against the modules of the group.
TEST_F(CrashLoopTest, UnblamedDeathsCountAgainstTheGroupToo) {
  v1::LoadResponse bystander;
  ASSERT_TRUE(Load("bystander", k_versioned_v2, &bystander, {}, "other").ok());
  ASSERT_TRUE(Load("m", k_thread_sigkill, nullptr, {}, "looping").ok());
  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_FAILED);
  ASSERT_EQ(m.state(), v1::MODULE_STATE_FAILED) << m.last_error();
  EXPECT_THAT(m.last_error(), AllOf(HasSubstr("gave up"), HasSubstr("SIGKILL")));
  EXPECT_TRUE(RelibdAlive());
  EXPECT_EQ(Call("bystander", "version"), "v2");
  EXPECT_EQ(FindModule(Status(), "bystander")->worker_pid(), bystander.module().worker_pid());
}

// Each death comes ~50 ms after a restore, so each is a failed restart and
// the delay before the next doubles (50, 100, 200, 400 ms...). Before the
// fix the backoff was reset by every successful restore and stayed at 50 ms.
TEST_F(CrashLoopTest, BackoffGrowsWhileTheWorkerKeepsDyingSoonAfterRestore) {
  relibd_.reset();
  StartDaemon({"--restart-backoff-ms", "50", "--max-restarts", "100"});
  EventLog events(relibd_->stub());
  ASSERT_TRUE(Load("m", k_thread_overflow).ok());
  auto deadline = Clock::now() + std::chrono::seconds(15);
  while (events.All(WorkerExited).size() < 6 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto exits = events.All(WorkerExited);
  ASSERT_GE(exits.size(), 6u);
  std::vector<int64_t> gaps;
  for (size_t i = 1; i < 6; ++i) gaps.push_back(exits[i].unix_ms() - exits[i - 1].unix_ms());
  std::string shown;
  for (int64_t gap : gaps) shown += std::to_string(gap) + " ";
  // Restore time adds noise; the doubling dominates it.
  EXPECT_GE(gaps[4], 700) << shown;
  EXPECT_GT(gaps[4], 3 * gaps[0]) << shown;
  EXPECT_GT(gaps[3], gaps[1]) << shown;
  EXPECT_TRUE(RelibdAlive());
}

// A worker executable that cannot start: loads fail with the cause, relibd
// stays up for a few tries, then exits 3 so the service manager takes over.
TEST_F(CrashLoopTest, RelibdExitsThreeWhenNoWorkerCanStart) {
  relibd_.reset();
  StartDaemon({"--worker", "/bin/false"});
  for (int attempt = 1; attempt <= 5; ++attempt) {
    ASSERT_TRUE(RelibdAlive()) << "attempt " << attempt;
    grpc::Status status = Load("m", k_versioned_v1);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("exited with code 1")) << attempt;
  }
  auto exit = WaitForRelibdExit(std::chrono::seconds(10));
  ASSERT_TRUE(exit.has_value()) << "relibd should give up after 5 failed worker starts";
  EXPECT_EQ(exit->kind, common::ExitStatus::Kind::kExited);
  EXPECT_EQ(exit->code, 3);
  EXPECT_THAT(relibd_->Log(), HasSubstr("cannot start relib-worker"));
}

// The worker executable breaks while modules run (a botched upgrade): the
// restarts fail before the worker says hello, which is no module's fault;
// after 5 in a row relibd exits 3.
TEST_F(CrashLoopTest, RelibdExitsThreeWhenTheWorkerBreaksUnderIt) {
  auto dir = common::TempDir::Create("/tmp", "relib-worker-copy-");
  ASSERT_THAT(dir, IsOk());
  std::string worker = dir->path() + "/relib-worker";
  std::filesystem::copy_file(kWorkerPath, worker);
  relibd_.reset();
  // No warm spare: one is started right after the load, concurrently with
  // its reply, and if its exec came before the break below it would
  // (rightly) serve the group — the test would depend on that race.
  StartDaemon({"--worker", worker, "--restart-backoff-ms", "20", "--spare-workers", "0"});
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  {
    std::ofstream(dir->path() + "/broken") << "#!/bin/sh\nexit 1\n";
    std::filesystem::permissions(dir->path() + "/broken", std::filesystem::perms::owner_all);
    std::filesystem::rename(dir->path() + "/broken", worker);
  }
  grpc::Status status;
  Call("m", "crash", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  auto exit = WaitForRelibdExit(std::chrono::seconds(20));
  ASSERT_TRUE(exit.has_value()) << "relibd should give up when no worker can start";
  EXPECT_EQ(exit->code, 3);
  std::string log = relibd_->Log();
  EXPECT_THAT(log, HasSubstr("cannot start relib-worker"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("gave up"))) << "not the module's fault";
}

// Orderly stops (every staged reload starts and stops a scratch worker, and
// relibd's shutdown stops the rest) are never reported as a signal death:
// the heartbeat thread once wrote into the flight recorder after the worker
// had unmapped it.
TEST_F(CrashLoopTest, OrderlyWorkerStopsNeverReportASignal) {
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  for (int i = 0; i < 200; ++i) {
    v1::ReloadRequest request;
    request.set_name("m");
    request.set_staged(true);
    v1::ReloadResponse response;
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Reload(&context, request, &response);
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
  }
  common::ExitStatus stopped = relibd_->Stop();
  EXPECT_EQ(stopped.code, 0);
  std::istringstream log(relibd_->Log());
  int exits = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find("phase=exit") == std::string::npos) continue;
    ++exits;
    EXPECT_THAT(line, ::testing::Not(HasSubstr("signal"))) << line;
  }
  EXPECT_GE(exits, 201);
}

}  // namespace
}  // namespace relib::testing
