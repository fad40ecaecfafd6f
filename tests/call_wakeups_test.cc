// The thread hand-offs of a Call: a lone call's reply is read by the gRPC
// handler thread that waits for it, so relibd's io thread is not woken for
// it; in the worker, the module's idle executor thread reads the call
// itself, so the link reader thread is not woken either. Counted from
// /proc/PID/task/*/status of the threads named relibd-io and relib-link.
#include <fstream>
#include <thread>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

class CallWakeupsTest : public RelibdTest {
 protected:
  // Voluntary context switches of `pid`'s thread named `name`; -1 if none.
  static int64_t SwitchesOf(pid_t pid, const std::string& name) {
    std::error_code error;
    for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
      std::ifstream in(task.path() / "status");
      std::string line, thread_name;
      int64_t switches = -1;
      while (std::getline(in, line)) {
        if (line.rfind("Name:", 0) == 0) thread_name = line.substr(6);
        if (line.rfind("voluntary_ctxt_switches:", 0) == 0) switches = std::stoll(line.substr(24));
      }
      if (thread_name == name) return switches;
    }
    return -1;
  }
};

// 300 calls one after another: the io thread sleeps through them (its
// watchdog ticks every 20 ms while calls are in flight; nothing else of a
// call wakes it). When it read the replies, it woke at least once per call.
TEST_F(CallWakeupsTest, LoneCallsAreAnsweredWithoutWakingTheIoThread) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  const pid_t relibd = relibd_->process().pid();
  const int64_t before = SwitchesOf(relibd, "relibd-io");
  ASSERT_GE(before, 0) << "relibd has no thread named relibd-io";
  constexpr int kCalls = 300;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  auto elapsed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  const int64_t woken = SwitchesOf(relibd, "relibd-io") - before;
  // The watchdog's ticks (one per 20 ms), with room for a slow machine.
  EXPECT_LE(woken, elapsed_ms / 20 + kCalls / 10)
      << "relibd's io thread woke " << woken << " times for " << kCalls << " calls in " << elapsed_ms << " ms";
}

// The same calls as seen by the worker: the module's executor thread waits
// on the link and runs each call it reads; the link reader thread (which
// reads when no executor is idle) sleeps through them. When it read every
// call and woke an executor for it, it woke at least once per call.
TEST_F(CallWakeupsTest, LoneCallsRunWithoutWakingTheWorkersLinkReader) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const pid_t worker = LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  const int64_t before = SwitchesOf(worker, "relib-link");
  ASSERT_GE(before, 0) << "the worker has no thread named relib-link";
  constexpr int kCalls = 300;
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  const int64_t woken = SwitchesOf(worker, "relib-link") - before;
  EXPECT_LE(woken, kCalls / 10) << "the worker's link reader woke " << woken << " times for " << kCalls << " calls";
}

}  // namespace
}  // namespace relib::testing
