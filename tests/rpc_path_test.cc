// relibd's RPC path has no thread hand-off: the thread that reads a request
// from a client's connection runs its handler and writes the answer. Counted
// as voluntary context switches of all relibd's threads (a hand-off costs
// each thread involved one), not timed.
#include <fstream>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

// Voluntary context switches of all threads of `pid` so far.
int64_t VoluntarySwitches(pid_t pid) {
  int64_t total = 0;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream in(task.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0) total += std::stoll(line.substr(24));
    }
  }
  return total;
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
  const int64_t before = VoluntarySwitches(relibd_->process().pid());
  for (int i = 0; i < kRequests; ++i) ASSERT_EQ(refuse(), grpc::StatusCode::NOT_FOUND);
  const double per_request =
      static_cast<double>(VoluntarySwitches(relibd_->process().pid()) - before) / kRequests;
  // One is the serving thread waiting for the next request. A hand-off from
  // a thread that read the request to one that runs the handler (and back,
  // and the polling role passed between threads) made it about five.
  EXPECT_LE(per_request, 2.0);
}

}  // namespace
}  // namespace relib::testing
