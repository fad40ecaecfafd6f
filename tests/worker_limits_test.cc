// Per-group resource limits of workers: a worker over its memory limit dies
// and is reported as such while other groups keep serving; core dumps are off
// by default; limits reach the worker process (checked in /proc).
#include <fstream>

#include "tests/proc_reading.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::HasSubstr;

class WorkerLimitsTest : public RelibdTest {
 protected:
  void SetUp() override {}
  static std::string Limit(pid_t pid, const std::string& name) { return ProcLimit(pid, name); }
};

TEST_F(WorkerLimitsTest, WorkerOverItsMemoryLimitIsReportedAndOtherGroupsKeepServing) {
  SKIP_UNDER_SANITIZER();
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-limit", "big:memory=768M", "--worker-limit", "*:nofile=512"}));
  pid_t bystander = LoadOrDie("hello", kHelloPath);
  pid_t big = LoadOrDie("identity", k_identity, {}, "big");
  ASSERT_NE(big, bystander);
  EXPECT_THAT(Limit(big, "Max address space"), HasSubstr("805306368"));
  EXPECT_THAT(Limit(big, "Max open files"), HasSubstr("512"));
  EXPECT_THAT(Limit(bystander, "Max address space"), HasSubstr("unlimited"));
  grpc::Status status;
  Call("identity", "alloc", "4096", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("exceeded its memory limit of 768 MiB")) << relibd_->Log();
  EXPECT_EQ(Call("hello", "greet", "still"), "Hello, still!");
  v1::ModuleInfo info = WaitForState("identity", v1::MODULE_STATE_LOADED);
  EXPECT_NE(info.worker_pid(), big);
  EXPECT_EQ(Call("identity", "ping"), "pong");
}

TEST_F(WorkerLimitsTest, WorkerOverItsCpuTimeLimitIsReportedAsSuch) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-limit", "hot:cpu=1"}));
  LoadOrDie("identity", k_identity, {}, "hot");
  grpc::Status status;
  Call("identity", "spin", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("exceeded its CPU time limit of 1 s")) << relibd_->Log();
}

TEST_F(WorkerLimitsTest, CoreDumpsAreOffByDefault) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  pid_t worker = LoadOrDie("hello", kHelloPath);
  EXPECT_THAT(Limit(worker, "Max core file size"), ::testing::MatchesRegex("Max core file size +0 +0 +bytes *"));
}

TEST_F(WorkerLimitsTest, BadLimitIsRefusedAtStartup) {
  auto relibd = RelibdProcess::Start({"--worker-limit", "big:memory=lots"});
  ASSERT_FALSE(relibd.ok());
  EXPECT_THAT(std::string(relibd.status().message()),
              ::testing::AllOf(HasSubstr("--worker-limit big:memory=lots"), HasSubstr("not a number")));
}

}  // namespace
}  // namespace relib::testing
