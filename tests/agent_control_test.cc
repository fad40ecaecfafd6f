// The worker's control loop (Agent::Run) over a real socket pair, with relibd's side played by the test.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "agent/agent.h"
#include "agent/daemon_link.h"
#include "common/frame_io.h"
#include "common/temp_dir.h"
#include "common/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing.h"

namespace relib::agent {
namespace {

using ::relib::testing::IsOk;

// A one-shot event a thread can wait for, with a bound.
class Event {
 public:
  void Notify() {
    std::lock_guard<std::mutex> lock(mutex_);
    set_ = true;
    changed_.notify_all();
  }
  bool WaitFor(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return set_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool set_ = false;
};

// Waits up to `timeout` for a frame on `fd`; false if none came.
bool ReadFrameWithin(int fd, v1::link::FromWorker* message, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
  return common::ReadFrame(fd, message).ok();
}

// An Agent running its control loop (Run) on a thread of its own over a
// socket pair whose other end, relibd_side(), the test plays relibd on.
// Closing that end ends Run; the destructor does so and joins, also when an
// assertion ended the test midway.
class AgentControlLoopTest : public ::testing::Test {
 protected:
  ~AgentControlLoopTest() override { EndAgent(); }

  // Ends Run and destroys the Agent (which joins its reader thread) when the
  // returned guard leaves scope. A test whose race hooks capture its locals
  // declares the guard after them: the agent's threads call the hooks until
  // they end, and the fixture's destructor runs only after those locals are
  // gone.
  auto EndAgentOnScopeExit() {
    return absl::MakeCleanup([this] { EndAgent(); });
  }

  // Starts Run with `hooks` (may be null) over a link of `frame_limit`, and
  // reads the worker's hello.
  void Start(Agent::RaceHooks* hooks, uint64_t frame_limit = common::kMaxFramePayloadBytes) {
    ::signal(SIGPIPE, SIG_IGN);
    int pair[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    relibd_side_ = common::UniqueFd(pair[0]);
    link_.emplace(common::UniqueFd(pair[1]), common::UniqueFd(), frame_limit);
    auto scratch = common::TempDir::Create("/tmp", "relib-agent-control-test-");
    ASSERT_THAT(scratch, IsOk());
    scratch_.emplace(std::move(scratch).value());
    agent_.emplace(*link_, scratch_->path(), nullptr, HostLimits{frame_limit});
    if (hooks != nullptr) agent_->set_race_hooks_for_testing(hooks);
    control_ = std::thread([this] {
      ran_ = agent_->Run();
      finished_.Notify();
    });
    v1::link::FromWorker hello;
    ASSERT_TRUE(ReadFrameWithin(relibd_side_.get(), &hello, std::chrono::seconds(5)));
    ASSERT_TRUE(hello.has_hello());
  }

  // An empty command: a lifecycle command as far as Dispatch goes, whose
  // reply (INVALID_ARGUMENT) needs no module.
  void SendEmptyCommand(uint64_t id) {
    v1::link::ToWorker command;
    command.set_id(id);
    ASSERT_THAT(common::WriteFrame(relibd_side_.get(), command), IsOk());
  }

  // relibd closes the link, which ends Run; waits for it.
  void Stop() {
    relibd_side_.Reset();
    if (control_.joinable()) control_.join();
  }

  void EndAgent() {
    Stop();
    agent_.reset();
  }

  int relibd_side() const { return relibd_side_.get(); }

  common::UniqueFd relibd_side_;
  std::optional<DaemonLink> link_;
  std::optional<common::TempDir> scratch_;
  std::optional<Agent> agent_;
  std::thread control_;
  absl::Status ran_;
  Event finished_;  // Run returned
};

// Review finding 1: a lifecycle command whose arrival the reader thread
// marks (Dispatch) while the control thread, just done with the previous
// command, looks whether one is queued. The order forced here: the reader
// thread has made the first of Dispatch's two stores; the control thread
// resets the stop flag and looks at the count; then the reader thread makes
// the second store, queues the command and lets the read token go; then the
// control thread leads the link. When the count was stored last, the
// control thread saw neither (the flag was reset after it was set, the
// count was still 0) and slept on the link with the command queued: no
// reply until relibd's phase deadline killed the worker.
TEST_F(AgentControlLoopTest, ACommandMarkedWhileTheControlThreadLooksIsRun) {
  Event marked;  // the reader thread made Dispatch's first store
  Event looked;  // the control thread reset the flag and found the count 0
  std::atomic<int> resets{0};
  std::atomic<int> leads{0};
  Agent::RaceHooks hooks;
  hooks.dispatch_between_stores = [&] {
    marked.Notify();
    // Bounded: with the stores in the right order the control thread sees
    // the count and never leads, so `looked` never comes.
    looked.WaitFor(std::chrono::seconds(1));
  };
  hooks.before_reset = [&] {
    if (resets.fetch_add(1) == 0) marked.WaitFor(std::chrono::seconds(5));
  };
  hooks.before_lead = [&] {
    if (leads.fetch_add(1) != 0) return;
    looked.Notify();
    // The reader thread finishes Dispatch, queues the command and lets
    // the read token go (microseconds; a slower one only makes this test
    // pass when it should not, never fail).
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  };
  const auto end_agent = EndAgentOnScopeExit();
  ASSERT_NO_FATAL_FAILURE(Start(&hooks));
  ASSERT_NO_FATAL_FAILURE(SendEmptyCommand(7));

  v1::link::FromWorker reply;
  const bool replied = ReadFrameWithin(relibd_side(), &reply, std::chrono::seconds(4));
  EXPECT_TRUE(replied) << "the command stayed queued while the control thread waited on the link";
  if (replied) {
    EXPECT_EQ(reply.reply().id(), 7u);
    EXPECT_EQ(reply.reply().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  }
}

// Review finding 2: a reply that cannot be sent (here: larger than the
// link's frame limit, RESOURCE_EXHAUSTED, the link itself still fine) ends
// Run with that error, as before the control thread led the link; it must
// not wait for the next command, which relibd, still waiting for this
// reply, never sends (the worker hung until relibd's phase deadline).
TEST_F(AgentControlLoopTest, AReplyThatCannotBeSentEndsRun) {
  // Room for the hello, not for the reply's error message.
  constexpr uint64_t kFrameLimit = 32;
  ASSERT_NO_FATAL_FAILURE(Start(nullptr, kFrameLimit));
  ASSERT_NO_FATAL_FAILURE(SendEmptyCommand(7));
  const bool ended = finished_.WaitFor(std::chrono::seconds(3));
  EXPECT_TRUE(ended) << "Run went on waiting for a command after its reply could not be sent";
  Stop();  // ends Run if it still waits
  EXPECT_EQ(ran_.code(), absl::StatusCode::kResourceExhausted) << ran_;
}

// Review finding 3: the control thread's file work after a reply (removing
// the old copy, making the spare) is done with the link let go: frames that
// come meanwhile (calls of other modules, relibd's answers to host
// requests, usage requests) are read by another thread, not left in the
// socket until that work ends. Here the work is made to last 2 s and a
// usage request (answered by whoever reads it) is sent during it.
TEST_F(AgentControlLoopTest, FramesAreReadWhileTheControlThreadWorksAfterAReply) {
  Event working;
  std::atomic<int> replies{0};
  Agent::RaceHooks hooks;
  hooks.after_reply = [&] {
    if (replies.fetch_add(1) != 1) return;  // the first comes before any command
    working.Notify();
    std::this_thread::sleep_for(std::chrono::seconds(2));
  };
  const auto end_agent = EndAgentOnScopeExit();
  ASSERT_NO_FATAL_FAILURE(Start(&hooks));
  ASSERT_NO_FATAL_FAILURE(SendEmptyCommand(7));
  ASSERT_TRUE(working.WaitFor(std::chrono::seconds(5)));
  v1::link::ToWorker usage;
  usage.set_id(8);
  usage.mutable_usage_request();
  ASSERT_THAT(common::WriteFrame(relibd_side(), usage), IsOk());
  // The reply to 7 came first; then the usage, well before the work ends.
  v1::link::FromWorker frame;
  ASSERT_TRUE(ReadFrameWithin(relibd_side(), &frame, std::chrono::seconds(1)));
  EXPECT_EQ(frame.reply().id(), 7u);
  const bool answered = ReadFrameWithin(relibd_side(), &frame, std::chrono::milliseconds(1000));
  EXPECT_TRUE(answered) << "the usage request waited behind the control thread's work after its reply";
  if (answered) {
    EXPECT_TRUE(frame.has_usage());
    EXPECT_EQ(frame.usage().request_id(), 8u);
  }
}

}  // namespace
}  // namespace relib::agent
