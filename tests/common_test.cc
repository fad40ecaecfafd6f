// common/: link framing over a real socketpair, child process classification
// with real processes, /proc readers on this process.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "common/child_process.h"
#include "common/chore_thread.h"
#include "common/frame_io.h"
#include "common/log_text.h"
#include "common/proc_maps.h"
#include "common/unique_fd.h"
#include "relib/v1/worker_link.pb.h"
#include "tests/testing.h"

namespace relib::common {
namespace {

using ::relib::testing::IsOk;
using ::relib::testing::StatusIs;
using ::testing::HasSubstr;

struct SocketPair {
  UniqueFd a, b;
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a.Reset(fds[0]);
    b.Reset(fds[1]);
  }
};

TEST(FrameIoTest, RoundTripsMessagesAcrossThreads) {
  SocketPair pair;
  constexpr int kMessages = 200;
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) {
      v1::link::ToWorker command;
      command.set_id(i);
      command.mutable_call()->set_input(std::string(i * 997, 'x'));  // up to ~200 KB: partial writes
      ASSERT_THAT(WriteFrame(pair.a.get(), command), IsOk());
    }
  });
  for (int i = 0; i < kMessages; ++i) {
    v1::link::ToWorker command;
    ASSERT_THAT(ReadFrame(pair.b.get(), &command), IsOk());
    EXPECT_EQ(command.id(), static_cast<uint64_t>(i));
    EXPECT_EQ(command.call().input().size(), static_cast<size_t>(i * 997));
  }
  writer.join();
}

TEST(FrameIoTest, CleanEofIsUnavailable) {
  SocketPair pair;
  pair.a.Reset();
  v1::link::ToWorker command;
  EXPECT_THAT(ReadFrame(pair.b.get(), &command), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(FrameIoTest, TruncatedFrameIsDataLoss) {
  SocketPair pair;
  unsigned char header[kFrameHeaderBytes];
  EncodeFrameHeader(100, header);
  ASSERT_EQ(::write(pair.a.get(), header, sizeof(header)), 4);
  ASSERT_EQ(::write(pair.a.get(), "abc", 3), 3);
  pair.a.Reset();
  v1::link::ToWorker command;
  EXPECT_THAT(ReadFrame(pair.b.get(), &command), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(FrameIoTest, OversizedLengthIsRejectedWithoutAllocating) {
  SocketPair pair;
  unsigned char header[kFrameHeaderBytes] = {0xff, 0xff, 0xff, 0xff};
  ASSERT_EQ(::write(pair.a.get(), header, sizeof(header)), 4);
  v1::link::ToWorker command;
  EXPECT_THAT(ReadFrame(pair.b.get(), &command), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("limit")));
}

TEST(FrameIoTest, LimitIsEnforcedOnBothSides) {
  SocketPair pair;
  v1::link::ToWorker command;
  command.mutable_call()->set_input(std::string(1000, 'i'));
  EXPECT_THAT(WriteFrame(pair.a.get(), command, 100), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("100")));
  ASSERT_THAT(WriteFrame(pair.a.get(), command, 2000), IsOk());
  v1::link::ToWorker received;
  EXPECT_THAT(ReadFrame(pair.b.get(), &received, 100), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("limit")));
}

TEST(FrameIoTest, GarbagePayloadIsDataLoss) {
  SocketPair pair;
  unsigned char header[kFrameHeaderBytes];
  EncodeFrameHeader(4, header);
  ASSERT_EQ(::write(pair.a.get(), header, sizeof(header)), 4);
  ASSERT_EQ(::write(pair.a.get(), "\xff\xff\xff\xff", 4), 4);
  v1::link::ToWorker command;
  EXPECT_THAT(ReadFrame(pair.b.get(), &command), StatusIs(absl::StatusCode::kDataLoss));
}

absl::StatusOr<ExitStatus> RunShell(const std::string& script) {
  SpawnOptions options;
  options.argv = {"/bin/sh", "-c", script};
  auto child = ChildProcess::Spawn(options);
  if (!child.ok()) return child.status();
  return child->Wait();
}

// A deferred chore runs at the latest after its delay, with nothing else
// posted (the backstop for a removal whose next reload never comes).
TEST(ChoreThreadTest, DeferredChoreRunsAfterItsDelayAlone) {
  ChoreThread chores;
  std::atomic<bool> ran{false};
  const auto start = std::chrono::steady_clock::now();
  chores.PostDeferred([&] { ran = true; }, std::chrono::milliseconds(30));
  while (!ran && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(ran);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(30));
}

// A Post runs the deferred chores first, in order, without waiting for their
// delay; the destructor runs whatever is left.
TEST(ChoreThreadTest, PostRunsDeferredChoresFirstAndDestructorRunsTheRest) {
  std::mutex mutex;
  std::vector<int> order;
  auto note = [&](int i) {
    std::lock_guard<std::mutex> lock(mutex);
    order.push_back(i);
  };
  {
    ChoreThread chores;
    chores.PostDeferred([&] { note(1); }, std::chrono::hours(1));
    chores.PostDeferred([&] { note(2); }, std::chrono::hours(1));
    std::atomic<bool> done{false};
    chores.Post([&] {
      note(3);
      done = true;
    });
    const auto start = std::chrono::steady_clock::now();
    while (!done && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(done);
    {
      std::lock_guard<std::mutex> lock(mutex);
      EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
    }
    chores.PostDeferred([&] { note(4); }, std::chrono::hours(1));
  }
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

TEST(LogTextTest, EscapesWhatCouldForgeALine) {
  using common::EscapeForLog;
  EXPECT_EQ(EscapeForLog("plain text"), "plain text");
  EXPECT_EQ(EscapeForLog(std::string("a\nb\rc\td\\e\0f\x1b[1m", 15)), "a\\nb\\rc\\td\\\\e\\x00f\\x1b[1m");
  // Valid UTF-8 stays; invalid bytes, C1 controls and U+2028 are escaped.
  EXPECT_EQ(EscapeForLog("gr\xc3\xbc\xc3\x9f"), "gr\xc3\xbc\xc3\x9f");
  EXPECT_EQ(EscapeForLog("\xff\xc3"), "\\xff\\xc3");
  EXPECT_EQ(EscapeForLog("\xc2\x85|\xe2\x80\xa8"), "\\xc2\\x85|\\xe2\\x80\\xa8");
  EXPECT_EQ(EscapeForLog(std::string(10, 'x'), 4), "xxxx [... 6 more bytes]");
}

TEST(ChildProcessTest, ClassifiesExitCode) {
  auto status = RunShell("exit 3");
  ASSERT_THAT(status, IsOk());
  EXPECT_EQ(status->kind, ExitStatus::Kind::kExited);
  EXPECT_EQ(status->code, 3);
  EXPECT_EQ(status->ToString(), "exited with code 3");
}

TEST(ChildProcessTest, ClassifiesSignal) {
  auto status = RunShell("ulimit -c 0; kill -SEGV $$");
  ASSERT_THAT(status, IsOk());
  EXPECT_EQ(status->kind, ExitStatus::Kind::kSignaled);
  EXPECT_EQ(status->code, SIGSEGV);
  EXPECT_THAT(status->ToString(), HasSubstr("SIGSEGV"));
}

TEST(ChildProcessTest, MissingExecutableExits127) {
  SpawnOptions options;
  options.argv = {"/nonexistent/binary"};
  auto child = ChildProcess::Spawn(options);
  ASSERT_THAT(child, IsOk());
  auto status = child->Wait();
  ASSERT_THAT(status, IsOk());
  EXPECT_EQ(status->code, 127);
}

TEST(ChildProcessTest, TerminateStopsAndReaps) {
  SpawnOptions options;
  options.argv = {"/bin/sleep", "100"};
  auto child = ChildProcess::Spawn(options);
  ASSERT_THAT(child, IsOk());
  pid_t pid = child->pid();
  ExitStatus status = child->Terminate(1000);
  EXPECT_EQ(status.kind, ExitStatus::Kind::kSignaled);
  EXPECT_EQ(status.code, SIGTERM);
  EXPECT_TRUE(child->reaped());
  EXPECT_NE(::kill(pid, 0), 0);  // gone, not a zombie
  EXPECT_THAT(child->Signal(SIGKILL), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(ChildProcessTest, ChildInheritsOnlyHandedOverFds) {
  SocketPair pair;  // CLOEXEC anyway; also create a non-CLOEXEC fd that must not leak
  int leaky = ::dup(pair.a.get());
  ASSERT_GE(leaky, 0);
  UniqueFd leaky_owner(leaky);
  SpawnOptions options;
  options.argv = {"/bin/sh", "-c", "ls /proc/self/fd | wc -l > /dev/fd/5"};
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  UniqueFd read_end(out[0]), write_end(out[1]);
  options.fds = {{write_end.get(), 5}};
  auto child = ChildProcess::Spawn(options);
  ASSERT_THAT(child, IsOk());
  write_end.Reset();
  ASSERT_THAT(child->Wait(), IsOk());
  char buffer[16] = {};
  ASSERT_GT(::read(read_end.get(), buffer, sizeof(buffer) - 1), 0);
  // 0, 1, 2, 5, plus the fd ls opens for /proc/self/fd.
  EXPECT_EQ(std::atoi(buffer), 5);
}

TEST(ProcMapsTest, FindsLibcAndRss) {
  auto mappings = ReadMappings(0);
  ASSERT_THAT(mappings, IsOk());
  bool libc = false;
  for (const auto& m : *mappings) libc = libc || m.path.find("libc.so") != std::string::npos;
  EXPECT_TRUE(libc);
  auto rss = ReadRssBytes(0);
  ASSERT_THAT(rss, IsOk());
  EXPECT_GT(*rss, 1u << 20);
  EXPECT_THAT(ReadMappings(999999999), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace relib::common
