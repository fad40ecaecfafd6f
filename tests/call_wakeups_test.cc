// The thread hand-offs of a Call: a lone call's reply is read by the gRPC
// handler thread that waits for it, so relibd's io thread is not woken for
// it; in the worker, the module's idle executor thread reads the call
// itself, so the link reader thread is not woken either. Counted from
// /proc/PID/task/*/status of the threads named relibd-io and relib-link.
// And the reads of the link a lone call costs, counted by strace.
#include <unistd.h>

#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/relibd_fixture.h"
#include "tests/strace_session.h"

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

  // recvfrom syscalls made by every thread of `pid` while `work` runs,
  // counted by `strace -c` attached for that time; -1 if strace cannot run
  // here, 0 if its summary has no recvfrom row. (The link is read with recv,
  // which is recvfrom; gRPC reads its connections with recvmsg.)
  static int64_t RecvfromCalls(pid_t pid, const std::function<void()>& work) {
    auto counts = SyscallCalls(pid, {"recvfrom"}, work);
    return counts.empty() ? -1 : counts["recvfrom"];
  }

  // The same for each syscall in `names` (one strace: a process has one
  // tracer): each name's count (0 if its row is missing); empty if strace
  // cannot run here.
  static std::map<std::string, int64_t> SyscallCalls(pid_t pid, const std::vector<std::string>& names,
                                                    const std::function<void()>& work) {
    std::string trace = "trace=";
    for (const std::string& name : names) trace += (trace.size() > 6 ? "," : "") + name;
    auto session = StraceSession::Attach(pid, {"-c", "-e", trace});
    if (!session) return {};
    work();
    std::optional<std::string> text = session->Stop();
    if (!text) return {};
    std::istringstream in(*text);
    std::string line;
    std::map<std::string, int64_t> calls;
    for (const std::string& name : names) calls[name] = 0;
    // "... seconds  usecs/call  calls  [errors] NAME"
    const std::regex row(R"(^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+\s+)?(\w+)\s*$)");
    bool summary = false;  // strace's table header: "% time     seconds ..."
    while (std::getline(in, line)) {
      if (line.find("% time") != std::string::npos) summary = true;
      std::smatch match;
      if (std::regex_match(line, match, row) && calls.count(match[3].str())) calls[match[3].str()] = std::stoll(match[1]);
    }
    if (!summary) return {};
    return calls;
  }
};

// A lone small call reads the link once on each side: the reply (relibd)
// and the command (worker) in one recv each. Before, each side also read
// once before sleeping in poll and once more after the frame (both found
// nothing): three recvs per frame.
TEST_F(CallWakeupsTest, LoneCallsReadTheLinkOncePerFrame) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const pid_t worker = LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  constexpr int kCalls = 200;
  auto calls = [&] {
    for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  };
  const int64_t in_relibd = RecvfromCalls(relibd_->process().pid(), calls);
  if (in_relibd < 0) GTEST_SKIP() << "strace cannot run here";
  const int64_t in_worker = RecvfromCalls(worker, calls);
  if (in_worker < 0) GTEST_SKIP() << "strace cannot trace the worker here";
  // Every reply and every command is read at least once: fewer means the
  // summary was not understood (the bound below would then prove nothing).
  ASSERT_GE(in_relibd, kCalls) << "strace's summary for relibd not understood";
  ASSERT_GE(in_worker, kCalls) << "strace's summary for the worker not understood";
  // Room for a spurious wake-up now and then (the heartbeat, a slow machine).
  EXPECT_LE(in_relibd, kCalls * 3 / 2) << "relibd read the link " << in_relibd << " times for " << kCalls << " calls";
  EXPECT_LE(in_worker, kCalls * 3 / 2) << "the worker read the link " << in_worker << " times for " << kCalls
                                       << " calls";
}

// A lone call lets each side's read token go right after the recv that read
// its frame came back short: neither side then asks the socket whether more
// bytes wait (the watch turned back on reports any). Before, relibd and the
// worker each made one ioctl(FIONREAD) per call (strace: 1.00 per call on
// each side), nearly always finding nothing.
TEST_F(CallWakeupsTest, LoneCallsDoNotAskTheLinkForPendingBytes) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const pid_t worker = LoadOrDie("m", k_versioned_v1);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  constexpr int kCalls = 200;
  auto calls = [&] {
    for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "version"), "v1");
  };
  // Each side reads the link once per call: the count proves strace saw them.
  auto in_relibd = SyscallCalls(relibd_->process().pid(), {"ioctl", "recvfrom"}, calls);
  if (in_relibd.empty()) GTEST_SKIP() << "strace cannot run here";
  auto in_worker = SyscallCalls(worker, {"ioctl", "recvfrom"}, calls);
  if (in_worker.empty()) GTEST_SKIP() << "strace cannot trace the worker here";
  ASSERT_GE(in_relibd["recvfrom"], kCalls) << "strace's summary for relibd not understood";
  ASSERT_GE(in_worker["recvfrom"], kCalls) << "strace's summary for the worker not understood";
  const int64_t ioctls_in_relibd = in_relibd["ioctl"], ioctls_in_worker = in_worker["ioctl"];
  // Room for the odd frame that came while a side let the token go.
  EXPECT_LE(ioctls_in_relibd, kCalls / 10) << "relibd made " << ioctls_in_relibd << " ioctls for " << kCalls << " calls";
  EXPECT_LE(ioctls_in_worker, kCalls / 10) << "the worker made " << ioctls_in_worker << " ioctls for " << kCalls
                                           << " calls";
}

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

// Lone 64 KiB calls take the same path as small ones: relibd's waiting
// handler reads the reply and the module's idle executor reads the call, so
// neither relibd's io thread nor the worker's link reader wakes for them.
// (Before, frames over 16 KiB were handed to those threads: each woke at
// least once per call.)
TEST_F(CallWakeupsTest, LoneLargeCallsWakeNeitherTheIoThreadNorTheLinkReader) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const pid_t worker = LoadOrDie("m", k_versioned_v1);
  const std::string input(64 << 10, 'x');
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Call("m", "echo", input).size(), input.size());
  const pid_t relibd = relibd_->process().pid();
  const int64_t io_before = SwitchesOf(relibd, "relibd-io");
  const int64_t link_before = SwitchesOf(worker, "relib-link");
  ASSERT_GE(io_before, 0) << "relibd has no thread named relibd-io";
  ASSERT_GE(link_before, 0) << "the worker has no thread named relib-link";
  constexpr int kCalls = 300;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Call("m", "echo", input), input);
  auto elapsed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  const int64_t io_woken = SwitchesOf(relibd, "relibd-io") - io_before;
  const int64_t link_woken = SwitchesOf(worker, "relib-link") - link_before;
  // The io thread's watchdog ticks (one per 20 ms), with room for a slow machine.
  EXPECT_LE(io_woken, elapsed_ms / 20 + kCalls / 10)
      << "relibd's io thread woke " << io_woken << " times for " << kCalls << " calls in " << elapsed_ms << " ms";
  EXPECT_LE(link_woken, kCalls / 10) << "the worker's link reader woke " << link_woken << " times for " << kCalls
                                     << " calls";
}

}  // namespace
}  // namespace relib::testing
