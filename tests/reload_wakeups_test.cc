// The thread hand-offs of a Reload. In the worker: an idle worker's control
// thread (which runs lifecycle commands) waits on the link itself, so a
// reload wakes it alone and not the link reader thread first; and once calls
// come, the module's executor leads the link again (a call wakes no reader).
// Counted from /proc/PID/task/*/status of the thread named relib-link. And
// the split of the worker round trip that the reload's response reports.
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
  // Voluntary context switches of `pid`'s main thread (the worker's control
  // thread, which runs lifecycle commands); -1 if it is gone.
  static int64_t ControlThreadSwitches(pid_t pid) {
    for (const ThreadSwitches& thread : VoluntarySwitchesByThread(pid)) {
      if (thread.tid == std::to_string(pid)) return thread.voluntary;
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

// The control thread leads only until it reads a call: after a reload, the
// module's executor takes the link back, and lone calls again run without
// waking the link reader (nor stay behind a control thread that waits).
// Counted on both: a control thread that kept leading would read every call
// itself (woken once per call) and the link reader would not wake either.
TEST_F(ReloadWakeupsTest, CallsAfterAReloadStillRunWithoutWakingTheLinkReader) {
  const pid_t worker = LoadOrDie("m", k_versioned_v1);
  ASSERT_TRUE(Reload("m", k_versioned_v2).ok());
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "version"), "v2");
  const int64_t before = SwitchesOf(worker, "relib-link");
  ASSERT_GE(before, 0) << "the worker has no thread named relib-link";
  const int64_t control_before = ControlThreadSwitches(worker);
  ASSERT_GE(control_before, 0);
  constexpr int kCalls = 300;
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "version"), "v2");
  const int64_t woken = SwitchesOf(worker, "relib-link") - before;
  EXPECT_LE(woken, kCalls / 10) << "the worker's link reader woke " << woken << " times for " << kCalls << " calls";
  const int64_t control_woken = ControlThreadSwitches(worker) - control_before;
  EXPECT_LE(control_woken, kCalls / 10) << "the worker's control thread woke " << control_woken << " times for "
                                        << kCalls << " calls: it still led the link";
  // Lifecycle commands still arrive while an executor leads.
  ASSERT_TRUE(Reload("m", k_versioned_v1).ok());
  EXPECT_EQ(Call("m", "version"), "v1");
  v1::UnloadResponse unloaded;
  ASSERT_TRUE(Unload("m", &unloaded).ok());
  EXPECT_TRUE(unloaded.report().unmapped());
}

// The reload's timing splits the worker round trip: the worker's own part
// (command read to reply written, which holds its load timer) and the link.
// Read from real reloads: the parts nest, and each reload's handling covers
// its load and fits in relibd's round trip.
TEST_F(ReloadWakeupsTest, ReloadTimingSplitsTheWorkerRoundTrip) {
  LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 20; ++i) {
    v1::ReloadResponse response;
    grpc::Status status = Reload("m", i % 2 ? k_versioned_v1 : k_versioned_v2, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const int64_t load = response.module().stats().load_micros();
    const int64_t handling = response.worker_handling_micros();
    const int64_t round_trip = response.worker_round_trip_micros();
    ASSERT_GT(load, 0) << "reload " << i;
    EXPECT_GE(handling, load) << "reload " << i << ": the worker's handling must hold its load timer";
    EXPECT_LE(handling, round_trip) << "reload " << i << ": the worker's handling must fit in relibd's round trip";
    EXPECT_LE(round_trip, response.daemon_micros()) << "reload " << i;
  }
}

}  // namespace
}  // namespace relib::testing
