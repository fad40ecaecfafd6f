// An idle relibd goes quiet: once nothing is in flight, relibd (every thread,
// including gRPC's) and its workers wake at most a few times a second, with
// a module loaded, a spare worker standing by and a client connected with an
// open Events stream. Counted from /proc/PID/task/*/status.
#include <fstream>

#include "absl/strings/str_cat.h"
#include "tests/event_log.h"
#include "tests/proc_reading.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

class IdleWakeupsTest : public RelibdTest {
 protected:
  void SetUp() override {}

  // Voluntary context switches of every thread of `pid`, by thread (name/tid).
  static std::map<std::string, int64_t> Switches(pid_t pid) {
    std::map<std::string, int64_t> by_thread;
    for (const ThreadSwitches& thread : VoluntarySwitchesByThread(pid)) {
      by_thread[absl::StrCat(thread.name, "/", thread.tid)] = thread.voluntary;
    }
    return by_thread;
  }
  // Wakeups per second of `pid` over `seconds`, and a per-thread account.
  static double WakeupsPerSecond(pid_t pid, double seconds, std::string* account) {
    auto before = Switches(pid);
    auto start = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    auto after = Switches(pid);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t total = 0;
    for (const auto& [thread, count] : after) {
      int64_t delta = count - (before.count(thread) ? before[thread] : 0);
      total += delta;
      if (delta > 0) absl::StrAppend(account, thread, " ", delta, "; ");
    }
    return static_cast<double>(total) / elapsed;
  }
};

TEST_F(IdleWakeupsTest, IdleRelibdAndWorkerWakeAtMostFiveTimesASecond) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  pid_t worker = LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 50; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  EventLog events(relibd_->stub());  // a connected client with a stream open
  ASSERT_EQ(Call("m", "version"), "v1");
  // What activity left behind (a watchdog lingering, gRPC's connection
  // timers) has settled after this.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::string relibd_account, worker_account;
  double relibd = WakeupsPerSecond(relibd_->process().pid(), 5.0, &relibd_account);
  EXPECT_LE(relibd, 5.0) << relibd_account;
  double in_worker = WakeupsPerSecond(worker, 3.0, &worker_account);
  EXPECT_LE(in_worker, 5.0) << worker_account;
}

TEST_F(IdleWakeupsTest, RelibdGoesQuietSoonAfterActivity) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  // Within half a second of the last call, relibd stops watching the worker.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::string account;
  double rate = WakeupsPerSecond(relibd_->process().pid(), 2.0, &account);
  EXPECT_LE(rate, 5.0) << account;
}

// gRPC's timer threads (grpc_global_timer, timer_manager): about one wakeup
// a second each when no gRPC timer is pending. relibd's side of a connection
// arms none after activity (no keepalive, no BDP probe): before, the probe's
// timer after calls that moved data left the iomgr timer thread waking
// 3-6 times a second for many seconds.
TEST_F(IdleWakeupsTest, GrpcTimersStayQuietAfterCallsThatMoveData) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  LoadOrDie("m", k_versioned_v1);
  v1::CallRequest request;
  request.set_name("m");
  request.set_export_name("version");
  request.set_input(std::string(64 << 10, 'x'));
  for (int i = 0; i < 200; ++i) {
    v1::CallResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(relibd_->stub().Call(&context, request, &response).ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  std::string account;
  double timers = 0;
  auto before = Switches(relibd_->process().pid());
  auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(5));
  auto after = Switches(relibd_->process().pid());
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int timer_threads = 0;
  for (const auto& [thread, count] : after) {
    int64_t delta = count - (before.count(thread) ? before[thread] : 0);
    if (thread.rfind("grpc_global_tim", 0) == 0 || thread.rfind("timer_manager", 0) == 0) {
      ++timer_threads;
      timers += delta;
    }
    if (delta > 0) absl::StrAppend(&account, thread, " ", delta, "; ");
  }
  // Found by gRPC's thread names: without them the count below means nothing.
  ASSERT_GT(timer_threads, 0) << account;
  EXPECT_LE(timers / elapsed, 3.0) << account;
}

}  // namespace
}  // namespace relib::testing
