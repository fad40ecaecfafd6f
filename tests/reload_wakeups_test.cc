// The thread hand-offs of a Reload. In the worker: an idle worker's control
// thread (which runs lifecycle commands) waits on the link itself, so a
// reload wakes it alone and not the link reader thread first; and once calls
// come, the module's executor leads the link again (a call wakes no reader).
// In relibd: the request thread makes the next copy's inode and removes the
// replaced copies itself while the worker loads, waking no chore thread.
// Counted from /proc/PID/task/*/status of the threads named relib-link and
// chores.
#include "tests/proc_reading.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

class ReloadWakeupsTest : public RelibdTest {
 protected:
  // Voluntary context switches of `pid`'s thread named `name`; -1 if none.
  static int64_t SwitchesOf(pid_t pid, const std::string& name) {
    for (const ThreadSwitches& thread : VoluntarySwitchesByThread(pid)) {
      if (thread.name == name) return thread.voluntary;
    }
    return -1;
  }
};

// 100 reloads one after another: each reaches the worker's control thread
// without the link reader thread. When the reader read every command and
// woke the control thread for it, it woke at least once per reload. (A
// module whose hooks use the host API, as save_state, wakes it for relibd's
// answers, which it reads while the control thread waits: identity has no
// hooks.)
TEST_F(ReloadWakeupsTest, ReloadsReachTheControlThreadWithoutWakingTheLinkReader) {
  const pid_t worker = LoadOrDie("m", k_identity);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Reload("m", k_identity).ok());
  const int64_t before = SwitchesOf(worker, "relib-link");
  ASSERT_GE(before, 0) << "the worker has no thread named relib-link";
  constexpr int kReloads = 100;
  for (int i = 0; i < kReloads; ++i) {
    v1::ReloadResponse response;
    grpc::Status status = Reload("m", k_identity, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_TRUE(response.report().unmapped()) << "reload " << i << ": the old version stayed mapped";
  }
  EXPECT_EQ(Call("m", "ping"), "pong");
  const int64_t woken = SwitchesOf(worker, "relib-link") - before;
  EXPECT_LE(woken, kReloads / 10) << "the worker's link reader woke " << woken << " times for " << kReloads
                                  << " reloads";
}

// relibd's chore thread (file-system work nobody waits for) used to be
// woken at every reload's start; the request thread now does that work
// while its worker loads. What is left for the chore thread is the backstop
// for removals nobody tidied (at most one wake-up per 100 ms).
TEST_F(ReloadWakeupsTest, ReloadsDoNotWakeRelibdsChoreThread) {
  LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Reload("m", i % 2 ? k_versioned_v1 : k_versioned_v2).ok());
  const pid_t relibd = relibd_->process().pid();
  const int64_t before = SwitchesOf(relibd, "chores");
  ASSERT_GE(before, 0) << "relibd has no thread named chores";
  constexpr int kReloads = 100;
  const std::string good_dir = relibd_->dir() + "/good/";
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kReloads; ++i) {
    ASSERT_TRUE(Reload("m", i % 2 ? k_versioned_v1 : k_versioned_v2).ok());
    // The copy this reload replaced goes at the next one, while its worker
    // loads: the one before it is gone once a reload returns.
    const int version = 5 + 1 + i + 1;  // this reload's version; the load was 1
    EXPECT_FALSE(std::filesystem::exists(good_dir + "m.v" + std::to_string(version - 2) + ".so"))
        << "reload " << i << ": version " << version - 2 << "'s copy is still there";
  }
  const auto elapsed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  const int64_t woken = SwitchesOf(relibd, "chores") - before;
  EXPECT_LE(woken, elapsed_ms / 100 + kReloads / 10)
      << "relibd's chore thread woke " << woken << " times for " << kReloads << " reloads in " << elapsed_ms << " ms";
  EXPECT_TRUE(std::filesystem::exists(good_dir + "m.v" + std::to_string(5 + 1 + kReloads) + ".so"));
}

// The control thread leads only until it reads a call: after a reload, the
// module's executor takes the link back, and lone calls again run without
// waking the link reader (nor stay behind a control thread that waits).
TEST_F(ReloadWakeupsTest, CallsAfterAReloadStillRunWithoutWakingTheLinkReader) {
  const pid_t worker = LoadOrDie("m", k_versioned_v1);
  ASSERT_TRUE(Reload("m", k_versioned_v2).ok());
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "version"), "v2");
  const int64_t before = SwitchesOf(worker, "relib-link");
  ASSERT_GE(before, 0) << "the worker has no thread named relib-link";
  constexpr int kCalls = 300;
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "version"), "v2");
  const int64_t woken = SwitchesOf(worker, "relib-link") - before;
  EXPECT_LE(woken, kCalls / 10) << "the worker's link reader woke " << woken << " times for " << kCalls << " calls";
  // Lifecycle commands still arrive while an executor leads.
  ASSERT_TRUE(Reload("m", k_versioned_v1).ok());
  EXPECT_EQ(Call("m", "version"), "v1");
  v1::UnloadResponse unloaded;
  ASSERT_TRUE(Unload("m", &unloaded).ok());
  EXPECT_TRUE(unloaded.report().unmapped());
}

}  // namespace
}  // namespace relib::testing
