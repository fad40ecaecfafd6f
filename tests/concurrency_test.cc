// The execution model against a real relibd and worker: calls of different
// modules and concurrent calls of one module run side by side, deadlines
// count from when a call starts, queues are bounded, a reload under load
// loses no call and every answer names the version that ran it.
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

int64_t MillisSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

class ConcurrencyTest : public RelibdTest {
 protected:
  // A call through the gRPC API with the whole response.
  grpc::Status CallFull(const std::string& name, const std::string& export_name, const std::string& input,
                        v1::CallResponse* response) {
    v1::CallRequest request;
    request.set_name(name);
    request.set_export_name(export_name);
    request.set_input(input);
    grpc::ClientContext context;
    return relibd_->stub().Call(&context, request, response);
  }
  static v1::ModuleOptions ThreadSafe(uint32_t limit, uint32_t call_deadline_ms = 0) {
    v1::ModuleOptions options;
    options.set_max_concurrent_calls(limit);
    options.set_call_deadline_ms(call_deadline_ms);
    return options;
  }
};

// Module A's export sleeps 5 s; module B in the same worker answers meanwhile.
TEST_F(ConcurrencyTest, OtherModuleAnswersWhileOneSleeps) {
  pid_t a = LoadOrDie("A", k_conc_a);
  pid_t b = LoadOrDie("B", k_conc_b);
  ASSERT_EQ(a, b) << "both modules must share one worker";
  std::thread sleeper([&] { EXPECT_EQ(Call("A", "sleep", "5000"), "slept 5000"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto start = Clock::now();
  EXPECT_EQ(Call("B", "echo", "hi"), "hi");
  EXPECT_LT(MillisSince(start), 1000) << "B waited for A";
  // Status does not wait behind the sleeping call either.
  start = Clock::now();
  Status();
  EXPECT_LT(MillisSince(start), 1000) << "Status waited for a call";
  sleeper.join();
}

// Four concurrent 2 s calls with a 3 s call deadline: the deadline counts
// from when each call starts running, and they run side by side.
TEST_F(ConcurrencyTest, ConcurrentCallsEachGetTheirOwnDeadline) {
  LoadOrDie("m", k_conc_a, ThreadSafe(4, 3000));
  auto start = Clock::now();
  std::vector<std::thread> threads;
  std::vector<std::string> answers(4);
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { answers[i] = Call("m", "sleep", "2000"); });
  for (auto& t : threads) t.join();
  for (const std::string& answer : answers) EXPECT_EQ(answer, "slept 2000");
  EXPECT_LT(MillisSince(start), 3500) << "the four calls did not run concurrently";
  v1::ModuleInfo info = WaitForState("m", v1::MODULE_STATE_LOADED);
  EXPECT_EQ(info.recent_crashes(), 0u);
}

// A serial module (no thread-safe flag) is never entered by two threads at
// once, whatever max_concurrent_calls asks; its load says so.
TEST_F(ConcurrencyTest, SerialModuleIsNeverEnteredTwice) {
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("s", k_conc_serial, &loaded, ThreadSafe(8)).ok());
  bool warned = false;
  for (const auto& warning : loaded.module().warnings()) warned = warned || warning.find("serial") != std::string::npos;
  EXPECT_TRUE(warned) << "no warning that max_concurrent_calls 8 does not apply to a serial module";
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 10; ++j) errors += Call("s", "enter") == "ok" ? 0 : 1;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(Call("s", "overlaps"), "0");
}

// Calls beyond the limit queue; a full queue fails the call at once.
TEST_F(ConcurrencyTest, FullQueueIsResourceExhaustedNamingTheModule) {
  v1::ModuleOptions options = ThreadSafe(1);
  options.set_max_queued_calls(2);
  LoadOrDie("busy", k_conc_a, options);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] { ok += Call("busy", "sleep", "1500") == "slept 1500" ? 1 : 0; });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto start = Clock::now();
  grpc::Status status;
  Call("busy", "echo", "x", &status);
  EXPECT_LT(MillisSince(start), 500) << "a full queue must fail the call at once";
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("'busy'"));
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 3) << "the queued calls must all have run";
}

// A call that hangs past its deadline while another module's call runs is
// killed promptly (its own deadline, not after the other call) and named
// with module and export.
TEST_F(ConcurrencyTest, HungCallIsKilledAndNamedWhileOthersRun) {
  LoadOrDie("slow", k_conc_b, ThreadSafe(4, 10000));
  LoadOrDie("stuck", k_conc_a, ThreadSafe(4, 1000));
  std::thread slow([&] { Call("slow", "sleep", "3000"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto start = Clock::now();
  grpc::Status status;
  Call("stuck", "hang", "", &status);
  int64_t took = MillisSince(start);
  slow.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("'stuck'"));
  EXPECT_THAT(status.error_message(), HasSubstr("'hang'"));
  EXPECT_LT(took, 2500) << "the hung call was not killed at its own deadline";
  v1::ModuleInfo info = WaitForState("stuck", v1::MODULE_STATE_LOADED);
  EXPECT_THAT(info.last_error(), HasSubstr("hang"));
}

// Eight clients call one module while it is reloaded 100 times between two
// builds: no call fails, and every answer's version is the build that
// produced its output.
TEST_F(ConcurrencyTest, ReloadUnderLoadLosesNoCallAndVersionsMatch) {
  std::string path_a = Copy(k_conc_a, "conc_a.so");
  std::string path_b = Copy(k_conc_b, "conc_b.so");
  LoadOrDie("m", path_a, ThreadSafe(8));
  std::mutex mutex;
  std::map<uint64_t, std::string> build_of_version{{1, "build-a"}};
  std::vector<std::pair<uint64_t, std::string>> answers;
  std::vector<std::string> errors;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&] {
      while (!stop) {
        v1::CallResponse response;
        grpc::Status status = CallFull("m", "build", "", &response);
        std::lock_guard<std::mutex> lock(mutex);
        if (!status.ok()) {
          errors.push_back(status.error_message());
        } else {
          answers.emplace_back(response.version(), response.output());
        }
      }
    });
  }
  int64_t max_pause = 0;
  for (int i = 0; i < 100; ++i) {
    const std::string& path = i % 2 == 0 ? path_b : path_a;
    v1::ReloadResponse reloaded;
    grpc::Status status = Reload("m", path, &reloaded);
    ASSERT_TRUE(status.ok()) << status.error_message();
    max_pause = std::max(max_pause, reloaded.swap_pause_micros());
    std::lock_guard<std::mutex> lock(mutex);
    build_of_version[reloaded.module().version()] = i % 2 == 0 ? "build-b" : "build-a";
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_TRUE(errors.empty()) << errors.size() << " calls failed, first: " << errors.front();
  EXPECT_GT(answers.size(), 100u);
  int mismatched = 0;
  for (const auto& [version, output] : answers) {
    auto it = build_of_version.find(version);
    if (it == build_of_version.end() || it->second != output) ++mismatched;
  }
  EXPECT_EQ(mismatched, 0) << "of " << answers.size() << " answers";
  EXPECT_GT(max_pause, 0) << "no reload reported a swap pause";
}

}  // namespace
}  // namespace relib::testing
