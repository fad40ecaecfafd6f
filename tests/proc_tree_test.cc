// common/proc_tree against real processes: a child with a grandchild.
#include "common/proc_tree.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "tests/testing.h"

namespace relib::common {
namespace {

// Forks a child that forks a `sleep 1010` grandchild and waits; returns the
// child's pid once the grandchild has exec'd.
pid_t StartChildWithGrandchild() {
  pid_t child = ::fork();
  if (child == 0) {
    if (::fork() == 0) {
      ::execl("/bin/sleep", "sleep", "1010", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (;;) ::pause();
  }
  for (int i = 0; i < 500; ++i) {
    auto descendants = DescendantsOf(child);
    if (!descendants.empty() && CommandLine(descendants[0].pid) == "sleep 1010") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return child;
}

TEST(ProcTreeTest, DescendantsParentsFirstAndKillTreesKillsAndReaps) {
  pid_t child = StartChildWithGrandchild();
  auto stat = ReadProcStat(child);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->ppid, ::getpid());
  std::vector<ProcStat> tree = DescendantsOf(::getpid());
  std::vector<pid_t> order;
  for (const ProcStat& p : tree) {
    if (p.pid == child || p.ppid == child) order.push_back(p.pid);
  }
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], child);
  pid_t grandchild = order[1];
  EXPECT_EQ(CommandLine(grandchild), "sleep 1010");
  bool listed = false;
  for (const ProcStat& p : ChildrenOf(::getpid())) listed = listed || p.pid == child;
  EXPECT_TRUE(listed);

  EXPECT_EQ(KillTrees({*stat}, std::chrono::milliseconds(2000)), 2);
  // The child was reaped by KillTrees; the grandchild is gone (reaped by
  // whoever it was reparented to) shortly after.
  EXPECT_EQ(::waitpid(child, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  bool gone = false;
  for (int i = 0; i < 250 && !gone; ++i) {
    auto left = ReadProcStat(grandchild);
    gone = !left || left->state == 'Z';
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(gone);
}

TEST(ProcTreeTest, OpenPidfdRefusesAnotherProcessWithThatPid) {
  auto self = ReadProcStat(::getpid());
  ASSERT_TRUE(self.has_value());
  EXPECT_TRUE(OpenPidfd(*self).valid());
  ProcStat recycled = *self;
  recycled.start_time += 1;  // what a pid reused by a later process looks like
  EXPECT_FALSE(OpenPidfd(recycled).valid());
  EXPECT_FALSE(ReadProcStat(0x7ffffff0).has_value());
  EXPECT_EQ(CommandLine(0x7ffffff0), "");
}

}  // namespace
}  // namespace relib::common
