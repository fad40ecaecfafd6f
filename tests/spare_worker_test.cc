// The warm spare worker (--spare-workers): relibd keeps one started,
// module-less worker and hands it to a group whose worker died (or to a new
// group) when it was started with that group's settings; otherwise the group
// gets a fresh worker. Checked on real processes through /proc.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <set>

#include "common/proc_tree.h"
#include "tests/event_log.h"
#include "tests/proc_reading.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::HasSubstr;

class SpareWorkerTest : public RelibdTest {
 protected:
  void SetUp() override {}

  // relibd's relib-worker children that host no group: spares.
  std::vector<pid_t> Spares() {
    std::set<pid_t> hosting;
    const v1::StatusResponse status = Status();
    for (const auto& worker : status.workers()) hosting.insert(worker.pid());
    std::vector<pid_t> spares;
    for (const common::ProcStat& child : common::ChildrenOf(relibd_->process().pid())) {
      if (child.state == 'Z' || hosting.count(child.pid)) continue;
      std::ifstream comm("/proc/" + std::to_string(child.pid) + "/comm");
      std::string name;
      std::getline(comm, name);
      if (name == "relib-worker") spares.push_back(child.pid);
    }
    return spares;
  }
  // Waits up to 5 s for exactly one spare, other than `not_this`.
  pid_t WaitForSpare(pid_t not_this = 0) {
    for (int i = 0; i < 500; ++i) {
      auto spares = Spares();
      if (spares.size() == 1 && spares[0] != not_this) return spares[0];
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }
  static std::string Limit(pid_t pid, const std::string& name) { return ProcLimit(pid, name); }
  // Crashes module `name` and waits until it is loaded again; returns its new worker.
  pid_t CrashAndWait(const std::string& name) {
    grpc::Status status;
    Call(name, "crash", "", &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    v1::ModuleInfo info;
    for (int i = 0; i < 500; ++i) {
      const v1::StatusResponse status = Status();
      info = *FindModule(status, name);
      if (info.state() == v1::MODULE_STATE_LOADED && info.worker_pid() != 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(info.state(), v1::MODULE_STATE_LOADED) << info.last_error();
    return info.worker_pid();
  }
};

TEST_F(SpareWorkerTest, CrashedGroupGetsTheSpareAndANewSpareStarts) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());  // default flags: one spare
  pid_t first = LoadOrDie("m", k_versioned_v1);
  pid_t spare = WaitForSpare();
  ASSERT_NE(spare, 0) << "no spare worker after the first load";
  EXPECT_NE(spare, first);
  // Module-less: no module copy of this run is mapped in it.
  EXPECT_TRUE(ModuleMappings(spare).empty());
  EventLog events(relibd_->stub());

  pid_t after = CrashAndWait("m");
  EXPECT_EQ(after, spare) << "the crashed group did not get the spare";
  EXPECT_EQ(Call("m", "version"), "v1");
  pid_t next = WaitForSpare(spare);
  EXPECT_NE(next, 0) << "no new spare after the spare was handed over";
  EXPECT_NE(next, first);
  // The hand-over is a worker start for the group, announced after the death.
  int exited = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_WORKER_EXITED; });
  int started = events.Find([&](const v1::Event& e) {
    return e.kind() == v1::EVENT_KIND_WORKER_STARTED && e.worker_pid() == spare;
  });
  EXPECT_GE(exited, 0);
  EXPECT_GT(started, exited);
  EXPECT_EQ(events.Find([&](const v1::Event& e) {
              return e.kind() == v1::EVENT_KIND_WORKER_STARTED && e.worker_pid() == next;
            }),
            -1)
      << "a spare is announced when a group gets it, not when it starts";
}

TEST_F(SpareWorkerTest, GroupWithOtherLimitsGetsAFreshWorkerWithItsOwnLimits) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-limit", "tight:nofile=300", "--worker-limit", "*:nofile=700"}));
  LoadOrDie("hello", kHelloPath);
  pid_t spare = WaitForSpare();
  ASSERT_NE(spare, 0);
  // The spare has what every group has.
  EXPECT_THAT(Limit(spare, "Max open files"), HasSubstr("700"));
  pid_t tight = LoadOrDie("m", k_versioned_v1, {}, "tight");
  EXPECT_NE(tight, spare) << "a group with other limits took the spare";
  EXPECT_THAT(Limit(tight, "Max open files"), HasSubstr("300"));
  pid_t after = CrashAndWait("m");
  EXPECT_NE(after, spare);
  EXPECT_THAT(Limit(after, "Max open files"), HasSubstr("300"));
  EXPECT_EQ(Spares(), std::vector<pid_t>{spare}) << "the spare is kept for a group it fits";
  // A group with the common limits still gets it.
  pid_t other = LoadOrDie("m2", k_versioned_v2, {}, "other");
  EXPECT_EQ(other, spare);
  EXPECT_THAT(Limit(other, "Max open files"), HasSubstr("700"));
}

TEST_F(SpareWorkerTest, ZeroSparesMeansFreshWorkers) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--spare-workers", "0"}));
  pid_t first = LoadOrDie("m", k_versioned_v1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(Spares().empty());
  pid_t after = CrashAndWait("m");
  EXPECT_NE(after, first);
  EXPECT_TRUE(Spares().empty());
}

TEST_F(SpareWorkerTest, ADeadSpareIsReplacedAndCostsNoModuleAnything) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  pid_t worker = LoadOrDie("m", k_versioned_v1);
  pid_t spare = WaitForSpare();
  ASSERT_NE(spare, 0);
  EventLog events(relibd_->stub());
  ASSERT_EQ(::kill(spare, SIGKILL), 0);
  pid_t next = WaitForSpare(spare);
  EXPECT_NE(next, 0) << "the killed spare was not replaced";
  EXPECT_EQ(Call("m", "version"), "v1");
  const v1::StatusResponse status = Status();
  v1::ModuleInfo info = *FindModule(status, "m");
  EXPECT_EQ(info.worker_pid(), worker);
  EXPECT_EQ(info.recent_crashes(), 0u);
  for (const auto& e : events.Events()) EXPECT_NE(e.kind(), v1::EVENT_KIND_FAILED) << e.DebugString();
  EXPECT_FALSE(relibd_->process().TryReap().value().has_value()) << "relibd must stay up";
}

TEST_F(SpareWorkerTest, SpareRunsAsTheWorkerUserWithNoModuleCode) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  pid_t worker = LoadOrDie("m", k_versioned_v1);
  pid_t spare = WaitForSpare();
  ASSERT_NE(spare, 0);
  // Same identity as the group's worker (the harness runs workers as root,
  // unless --worker-user says otherwise; either way both match).
  auto uid_line = [](pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("Uid:", 0) == 0) return line;
    }
    return std::string();
  };
  EXPECT_EQ(uid_line(spare), uid_line(worker));
  EXPECT_TRUE(ModuleMappings(spare).empty());
  // Not listed as any group's worker.
  const v1::StatusResponse status = Status();
  for (const auto& w : status.workers()) EXPECT_NE(w.pid(), spare);
}

// A group whose own worker can never start (its limits leave relib-worker no
// room to even load) gives up after --max-failed-starts starts in a row, as
// documented (relibd exits 3), even while spares keep starting and saying
// hello in between: a spare's hello says nothing about that group's worker.
// On the base every spare's hello reset the count, so relibd never gave up.
TEST_F(SpareWorkerTest, SpareHellosDoNotHideAGroupWhoseWorkerNeverStarts) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-limit", "doomed:memory=8M", "--max-failed-starts", "3"}));
  LoadOrDie("m", k_versioned_v1);
  pid_t spare = WaitForSpare();
  ASSERT_NE(spare, 0);
  std::optional<common::ExitStatus> exited;
  for (int attempt = 1; attempt <= 4 && !exited; ++attempt) {
    grpc::Status status = Load("d" + std::to_string(attempt), k_versioned_v1, nullptr, {}, "doomed");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << attempt << ": " << status.error_message();
    // A new spare says hello before the next try.
    for (int i = 0; i < 100 && !exited; ++i) {
      auto reaped = relibd_->process().TryReap();
      if (reaped.ok() && reaped->has_value()) exited = **reaped;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (exited) break;
    ASSERT_EQ(::kill(spare, SIGKILL), 0);
    pid_t next = WaitForSpare(spare);
    ASSERT_NE(next, 0) << "the killed spare was not replaced";
    spare = next;
  }
  for (int i = 0; i < 500 && !exited; ++i) {
    auto reaped = relibd_->process().TryReap();
    if (reaped.ok() && reaped->has_value()) exited = **reaped;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(exited.has_value()) << "relibd kept trying a group whose worker never starts";
  EXPECT_EQ(exited->kind, common::ExitStatus::Kind::kExited);
  EXPECT_EQ(exited->code, 3);
  EXPECT_THAT(relibd_->Log(), HasSubstr("3 worker starts in a row failed"));
}

}  // namespace
}  // namespace relib::testing
