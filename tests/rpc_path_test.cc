// relibd's RPC path has no thread hand-off: the gRPC thread that reads a
// request from a client's connection runs its handler and writes the answer;
// relibd's own threads (Events, listener, io) take no part. Counted as
// voluntary context switches per thread (a thread that takes part in a
// request blocks again after it), not timed.
#include <fstream>
#include <map>

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

}  // namespace
}  // namespace relib::testing
