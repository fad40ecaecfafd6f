// The restart policy's bookkeeping without processes: blame, intensity,
// backoff growth and reset, and the failed-start limit.
#include "daemon/recovery.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace relib::daemon {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using std::chrono::milliseconds;
using std::chrono::seconds;

RestartPolicy Policy() {
  RestartPolicy policy;
  policy.max_restarts = 3;
  policy.window = seconds(60);
  policy.backoff_initial = milliseconds(100);
  policy.backoff_max = milliseconds(5000);
  policy.stable_after = seconds(10);
  policy.max_failed_starts = 3;
  return policy;
}

TEST(RecoveryTest, BlameFallsOnTheBlamedModuleOrOnTheWholeGroup) {
  std::vector<std::string> group = {"a", "b"};
  EXPECT_THAT(Recovery::Charged(group, "b", true), ElementsAre("b"));
  EXPECT_THAT(Recovery::Charged(group, "", true), ElementsAre("a", "b"));
  EXPECT_THAT(Recovery::Charged(group, "new", true), IsEmpty()) << "a first load's crash fails only that load";
  EXPECT_THAT(Recovery::Charged(group, "", false), IsEmpty()) << "no module code ran before hello";
}

TEST(RecoveryTest, CrashesOutsideTheWindowAreForgotten) {
  Recovery recovery(Policy());
  auto t = Recovery::Clock::time_point();
  EXPECT_EQ(recovery.AddCrash("m", t), 1);
  EXPECT_EQ(recovery.AddCrash("m", t + seconds(30)), 2);
  EXPECT_EQ(recovery.AddCrash("m", t + seconds(61)), 2);
  EXPECT_FALSE(recovery.GivesUp(3));
  EXPECT_TRUE(recovery.GivesUp(4));
  recovery.Forget("m");
  EXPECT_EQ(recovery.AddCrash("m", t + seconds(62)), 1);
}

TEST(RecoveryTest, DeathsSoonAfterARestartGrowTheBackoffAndAStableWorkerResetsIt) {
  Recovery recovery(Policy());
  auto t = Recovery::Clock::time_point() + seconds(100);
  // First death: not a failed restart, and a stable worker restarts at once.
  EXPECT_EQ(recovery.BackoffAfterDeath("g", t), milliseconds(0));
  for (int expected : {200, 400, 800, 1600, 3200, 5000, 5000}) {
    t += seconds(1);
    recovery.RestartBegins("g", t);
    t += milliseconds(50);
    EXPECT_EQ(recovery.BackoffAfterDeath("g", t), milliseconds(expected));
  }
  // Other groups have their own backoff.
  EXPECT_EQ(recovery.BackoffAfterDeath("other", t), milliseconds(0));
  // Up for longer than stable_after: back to the start.
  recovery.RestartBegins("g", t);
  t += seconds(11);
  EXPECT_EQ(recovery.BackoffAfterDeath("g", t), milliseconds(0));
}

TEST(RecoveryTest, GivesUpOnlyAfterConsecutiveFailedStarts) {
  Recovery recovery(Policy());
  EXPECT_FALSE(recovery.StartFailed("a"));
  EXPECT_FALSE(recovery.StartFailed("b"));
  recovery.WorkerReady("a");
  EXPECT_FALSE(recovery.StartFailed("a"));
  EXPECT_FALSE(recovery.StartFailed("b"));
  EXPECT_TRUE(recovery.StartFailed(""));
  EXPECT_EQ(recovery.failed_starts(""), 3);
}

// A spare's hello ("") shows workers start, not that group "g"'s own can:
// g's run of failed starts goes on through it; g's own hello ends it.
TEST(RecoveryTest, ASparesHelloDoesNotEndAGroupsRunOfFailedStarts) {
  Recovery recovery(Policy());
  EXPECT_FALSE(recovery.StartFailed("g"));
  recovery.WorkerReady("");
  EXPECT_FALSE(recovery.StartFailed("g"));
  recovery.WorkerReady("other");
  EXPECT_TRUE(recovery.StartFailed("g"));
  EXPECT_EQ(recovery.failed_starts("g"), 3);
  recovery.WorkerReady("g");
  EXPECT_FALSE(recovery.StartFailed("g"));
  EXPECT_EQ(recovery.failed_starts("g"), 1);
}

}  // namespace
}  // namespace relib::daemon
