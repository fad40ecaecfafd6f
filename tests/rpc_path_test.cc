// relibd's RPC path has no thread hand-off: the gRPC thread that reads a
// request from a client's connection runs its handler and writes the answer;
// relibd's own threads (Events, listener, io) take no part. Counted as
// voluntary context switches per thread (a thread that takes part in a
// request blocks again after it), not timed.
#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "tests/proc_reading.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

// Voluntary context switches so far of each thread of `pid`, by tid, and
// each thread's name.
std::map<std::string, std::pair<std::string, int64_t>> VoluntarySwitches(pid_t pid) {
  std::map<std::string, std::pair<std::string, int64_t>> by_thread;
  for (const ThreadSwitches& thread : VoluntarySwitchesByThread(pid)) by_thread[thread.tid] = {thread.name, thread.voluntary};
  return by_thread;
}

TEST_F(RelibdTest, ARequestIsReadAndAnsweredByOneThread) {
  // A Reload relibd refuses at once (no such module): the RPC path with no
  // module work behind it. One connection, one request at a time.
  auto refuse = [&] {
    v1::ReloadRequest request;
    request.set_name("no-such-module");
    v1::ReloadResponse response;
    grpc::ClientContext context;
    return relibd_->stub().Reload(&context, request, &response).error_code();
  };
  for (int i = 0; i < 50; ++i) ASSERT_EQ(refuse(), grpc::StatusCode::NOT_FOUND);
  constexpr int kRequests = 500;
  const pid_t pid = relibd_->process().pid();
  auto before = VoluntarySwitches(pid);
  for (int i = 0; i < kRequests; ++i) ASSERT_EQ(refuse(), grpc::StatusCode::NOT_FOUND);
  auto after = VoluntarySwitches(pid);
  // gRPC's synchronous-server threads serve the requests (two take turns
  // polling, as in any gRPC sync server; how often they switch depends on
  // timing). relibd's own threads (named relibd) should stay asleep. Before,
  // relibd's Events threads read every request and woke a synchronous
  // thread to run it: ~3.3 switches per request on them.
  // relibd's own threads: those named relibd (main, Events, listener),
  // relibd-io and chores.
  auto own_thread = [](const std::string& name) { return name.rfind("relibd", 0) == 0 || name == "chores"; };
  int64_t own = 0;
  int own_threads = 0;
  std::string account;
  for (const auto& [tid, thread] : after) {
    int64_t delta = thread.second - (before.count(tid) ? before[tid].second : 0);
    if (own_thread(thread.first)) {
      ++own_threads;
      own += delta;
    }
    if (delta > 0) account += thread.first + "/" + tid + " " + std::to_string(delta) + "; ";
  }
  // Found by name: main, the listener, the io thread and the Events threads.
  ASSERT_GE(own_threads, 4) << account;
  EXPECT_LE(static_cast<double>(own) / kRequests, 0.1) << account;
}

// 8 callers at once, after a warm-up: relibd serves them with the threads it
// already has. Before, gRPC's synchronous server kept at most 2 threads
// waiting for requests: a thread that finished a request while 2 others
// waited ended, and a request that took the last waiting thread started a
// new one, about one thread per seven requests under 8 callers. Thread ids
// are not reused while pids are plenty, so threads started (and perhaps
// ended again) show as ids not seen before the burst.
TEST_F(RelibdTest, ConcurrentCallersStartNoNewThreadsAfterWarmUp) {
  LoadOrDie("m", k_versioned_v1);
  constexpr int kCallers = 8;
  auto burst = [&](int calls_each) {
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c) {
      callers.emplace_back([&] {
        for (int i = 0; i < calls_each; ++i) EXPECT_EQ(Call("m", "version"), "v1");
      });
    }
    for (std::thread& caller : callers) caller.join();
  };
  burst(100);
  const pid_t pid = relibd_->process().pid();
  auto before = VoluntarySwitches(pid);
  constexpr int kCallsEach = 200;
  // Seen during the burst: any thread that lives a while shows up here.
  std::set<std::string> seen;
  std::thread burst_thread([&] { burst(kCallsEach); });
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done.load()) {
      for (const auto& [tid, thread] : VoluntarySwitches(pid)) seen.insert(tid);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  burst_thread.join();
  done = true;
  sampler.join();
  for (const auto& [tid, thread] : VoluntarySwitches(pid)) seen.insert(tid);
  std::string fresh;
  int fresh_threads = 0;
  for (const std::string& tid : seen) {
    if (before.count(tid)) continue;
    ++fresh_threads;
    fresh += tid + " ";
  }
  // Room for a thread or two the warm-up did not need (all 8 calls in
  // flight at once on a loaded machine); the old churn started ~200.
  EXPECT_LE(fresh_threads, 4) << "threads started during " << kCallers * kCallsEach << " calls: " << fresh;
}

}  // namespace
}  // namespace relib::testing
