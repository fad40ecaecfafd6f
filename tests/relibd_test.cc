// End to end: a real relibd, real relib-worker processes, real modules built
// by CMake, effects checked in /proc.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/proc_maps.h"
#include "grpcpp/grpcpp.h"
#include "tests/relibd_fixture.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST_F(RelibdTest, ReloadSwapsBehaviourAndUnmapsOldVersion) {
  std::string path = Copy(k_versioned_v1, "mod.so");
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", path, &loaded).ok());
  EXPECT_EQ(loaded.module().version(), 1u);
  EXPECT_EQ(loaded.module().state(), v1::MODULE_STATE_LOADED);
  pid_t worker = loaded.module().worker_pid();
  ASSERT_GT(worker, 0);
  EXPECT_EQ(Call("m", "version"), "v1");
  EXPECT_FALSE(ModuleMappings(worker, "/m.v1.").empty());

  Copy(k_versioned_v2, "mod.so");  // "rebuild" in place
  v1::ReloadResponse reloaded;
  ASSERT_TRUE(Reload("m", "", &reloaded).ok());
  EXPECT_EQ(reloaded.module().version(), 2u);
  EXPECT_TRUE(reloaded.report().unmapped());
  EXPECT_EQ(reloaded.report().version(), 1u);
  EXPECT_EQ(Call("m", "version"), "v2");
  EXPECT_TRUE(ModuleMappings(worker, "/m.v1.").empty());
  EXPECT_FALSE(ModuleMappings(worker, "/m.v2.").empty());
  EXPECT_EQ(Status().modules(0).worker_pid(), worker);  // same process throughout
}

TEST_F(RelibdTest, UnloadLeavesNoMappingInWorker) {
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("hello", kHelloPath, &loaded).ok());
  ASSERT_TRUE(Load("hello-c", kHelloCPath).ok());
  pid_t worker = loaded.module().worker_pid();
  EXPECT_EQ(Call("hello", "greet", "tests"), "Hello, tests!");
  EXPECT_EQ(Call("hello-c", "greet", "tests"), "Hello from C, tests!");
  EXPECT_EQ(ModuleMappings(worker, "/hello.v1.").size() > 0, true);
  v1::UnloadResponse unloaded;
  ASSERT_TRUE(Unload("hello", &unloaded).ok());
  EXPECT_TRUE(unloaded.report().unmapped());
  EXPECT_EQ(unloaded.report().worker_pid(), worker);
  EXPECT_TRUE(ModuleMappings(worker, "/hello.v1.").empty());
  ASSERT_TRUE(Unload("hello-c", &unloaded).ok());
  EXPECT_TRUE(ModuleMappings(worker).empty());
  EXPECT_EQ(Status().modules_size(), 0);
}

TEST_F(RelibdTest, BadInputGetsClearErrorAndLosesNothing) {
  ASSERT_TRUE(Load("good", k_versioned_v1).ok());
  pid_t worker = Status().modules(0).worker_pid();
  std::string text = relibd_->dir() + "/readme.so";
  std::ofstream(text) << "this is text";

  struct Case {
    std::string name, path;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases = {
      {"a", "/nonexistent/lib.so", grpc::StatusCode::NOT_FOUND, "does not exist"},
      {"b", text, grpc::StatusCode::INVALID_ARGUMENT, "not an ELF file"},
      {"c", k_no_descriptor, grpc::StatusCode::INVALID_ARGUMENT, "not a relib module"},
      {"d", k_wrong_abi, grpc::StatusCode::FAILED_PRECONDITION, "ABI version 99"},
      {"e", k_on_load_fails, grpc::StatusCode::FAILED_PRECONDITION, "database not reachable"},
      {"good", k_versioned_v2, grpc::StatusCode::ALREADY_EXISTS, "already loaded"},
      {"f", "relative/lib.so", grpc::StatusCode::INVALID_ARGUMENT, "must be absolute"},
      {"bad/name", k_versioned_v1, grpc::StatusCode::INVALID_ARGUMENT, "invalid module name"},
  };
  for (const Case& c : cases) {
    grpc::Status status = Load(c.name, c.path);
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.message)) << c.name;
  }
  grpc::Status status;
  Call("nobody", "version", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no module named 'nobody'"));
  Call("good", "nothing", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no export 'nothing'"));
  EXPECT_EQ(Reload("nobody", k_versioned_v1).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Unload("nobody").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(Call("good", "fail", "x"), HasSubstr("asked to fail: x"));

  // The daemon, the worker and the good module are untouched.
  EXPECT_EQ(Call("good", "version"), "v1");
  v1::StatusResponse after = Status();
  ASSERT_EQ(after.modules_size(), 1);
  EXPECT_EQ(after.modules(0).name(), "good");
  EXPECT_EQ(after.modules(0).worker_pid(), worker);
  EXPECT_EQ(after.modules(0).version(), 1u);
  EXPECT_EQ(ModuleMappings(worker).size(), ModuleMappings(worker, "/good.v1.").size());
}

TEST_F(RelibdTest, FailedLoadNeverUnmapsCodeItsConstructorThreadsRun) {
  ASSERT_TRUE(Load("good", k_versioned_v1).ok());
  pid_t worker = Status().modules(0).worker_pid();
  grpc::Status status = Load("bad", k_ctor_thread);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("ABI version 99"), HasSubstr("1 thread(s) running"),
                                            HasSubstr("stays mapped")));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Call("good", "version"), "v1");  // the worker did not crash
  EXPECT_EQ(Status().modules(0).worker_pid(), worker);
}

TEST_F(RelibdTest, ReloadThatFailsKeepsPreviousVersionServing) {
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  grpc::Status status = Reload("m", k_on_load_fails);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("database not reachable"), HasSubstr("loaded again")));
  EXPECT_EQ(Call("m", "version"), "v1");
  status = Reload("m", k_no_descriptor);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Call("m", "version"), "v1");
  v1::StatusResponse status_now = Status();
  const v1::ModuleInfo* info = FindModule(status_now, "m");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->version(), 1u);
  EXPECT_EQ(info->state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(info->path(), k_versioned_v1);
}

TEST_F(RelibdTest, FailingBeforeUnloadRefusesUnlessForced) {
  ASSERT_TRUE(Load("s", k_before_unload_fails).ok());
  grpc::Status status = Unload("s");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("still flushing"));
  EXPECT_EQ(Call("s", "version"), "stubborn");
  v1::UnloadResponse unloaded;
  ASSERT_TRUE(Unload("s", &unloaded, /*force=*/true).ok());
  EXPECT_THAT(unloaded.report().before_unload_error(), HasSubstr("still flushing"));
  EXPECT_TRUE(unloaded.report().unmapped());
}

TEST_F(RelibdTest, ConcurrentLoadsOfOneNameExactlyOneWins) {
  constexpr int kClients = 16;
  std::atomic<int> ok{0}, already{0}, other{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      auto stub = v1::Relibd::NewStub(
          grpc::CreateChannel("unix:" + relibd_->socket(), grpc::InsecureChannelCredentials()));
      v1::LoadRequest request;
      request.set_name("same");
      request.set_path(k_versioned_v1);
      v1::LoadResponse response;
      grpc::ClientContext context;
      grpc::Status status = stub->Load(&context, request, &response);
      if (status.ok()) {
        ++ok;
      } else if (status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
        ++already;
      } else {
        ++other;
      }
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(already.load(), kClients - 1);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(Call("same", "version"), "v1");
}

TEST_F(RelibdTest, CrashInCallCostsOnlyTheWorkerAndModulesComeBack) {
  ASSERT_TRUE(Load("good", k_versioned_v1).ok());
  ASSERT_TRUE(Load("crashy", k_versioned_v2).ok());
  ASSERT_EQ(Call("good", "count"), "1");
  pid_t worker = Status().modules(0).worker_pid();
  grpc::Status status;
  Call("crashy", "crash", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("SIGSEGV"), HasSubstr("in code of module 'crashy'"),
                                            HasSubstr("call 'crash' of module 'crashy'")));
  EXPECT_FALSE(relibd_->process().TryReap().value().has_value()) << "relibd must stay up";
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(worker)));

  // relibd restarts the worker and loads both modules again at their versions.
  v1::ModuleInfo good = WaitForState("good", v1::MODULE_STATE_LOADED);
  v1::ModuleInfo crashy = WaitForState("crashy", v1::MODULE_STATE_LOADED);
  ASSERT_EQ(good.state(), v1::MODULE_STATE_LOADED) << good.last_error();
  EXPECT_NE(good.worker_pid(), worker);
  EXPECT_EQ(good.version(), 1u);
  EXPECT_EQ(crashy.version(), 1u);
  EXPECT_EQ(good.recent_crashes(), 0u);
  EXPECT_EQ(crashy.recent_crashes(), 1u);  // blamed through the flight recorder
  EXPECT_EQ(Call("good", "version"), "v1");
  EXPECT_EQ(Call("crashy", "version"), "v2");
  EXPECT_EQ(Call("good", "count"), "1");  // a new process: in-memory state is gone (see the state store)
  ASSERT_TRUE(Unload("crashy").ok());
}

TEST_F(RelibdTest, ExitInCallIsReportedWithItsCode) {
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  grpc::Status status;
  Call("m", "exit", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("exited with code 3"));
  EXPECT_EQ(WaitForState("m", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("m", "version"), "v1");
}

TEST_F(RelibdTest, HangingCallHitsDeadlineAndWorkerIsReplaced) {
  relibd_.reset();
  StartDaemon({"--call-deadline-ms", "500"});
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  pid_t worker = Status().modules(0).worker_pid();
  grpc::Status status;
  auto start = std::chrono::steady_clock::now();
  Call("m", "hang", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("module 'm' exceeded its call deadline of 500 ms"),
                                            HasSubstr("export 'hang'"), HasSubstr("SIGTERM")));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(worker)));
  v1::ModuleInfo info = WaitForState("m", v1::MODULE_STATE_LOADED);
  EXPECT_NE(info.worker_pid(), worker);
  EXPECT_EQ(Call("m", "version"), "v1");
}

TEST_F(RelibdTest, EventsStreamReportsLifecycleInOrder) {
  grpc::ClientContext context;
  auto reader = relibd_->stub().Events(&context, v1::EventsRequest());
  // Wait for the stream to be live (the server sends initial metadata first).
  reader->WaitForInitialMetadata();
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  ASSERT_TRUE(Reload("m", k_versioned_v2).ok());
  ASSERT_TRUE(Unload("m").ok());
  ASSERT_FALSE(Load("x", "/nonexistent.so").ok());

  std::vector<v1::Event> events;
  v1::Event event;
  while (events.size() < 5 && reader->Read(&event)) events.push_back(event);
  context.TryCancel();
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].kind(), v1::EVENT_KIND_WORKER_STARTED);
  EXPECT_EQ(events[1].kind(), v1::EVENT_KIND_LOADED);
  EXPECT_EQ(events[1].module(), "m");
  EXPECT_EQ(events[2].kind(), v1::EVENT_KIND_RELOADED);
  EXPECT_EQ(events[2].version(), 2u);
  EXPECT_TRUE(events[2].report().unmapped());
  EXPECT_EQ(events[3].kind(), v1::EVENT_KIND_UNLOADED);
  EXPECT_TRUE(events[3].report().unmapped());
  EXPECT_EQ(events[4].kind(), v1::EVENT_KIND_FAILED);
  EXPECT_THAT(events[4].message(), HasSubstr("does not exist"));
  for (size_t i = 1; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), events[i - 1].sequence() + 1);
}

TEST_F(RelibdTest, TwoHundredReloadsKeepWorkerMemoryFlat) {
#ifdef RELIB_SANITIZED
  GTEST_SKIP() << "RSS is not meaningful in a sanitizer build";
#endif
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  pid_t worker = Status().modules(0).worker_pid();
  const char* versions[] = {k_versioned_v1, k_versioned_v2};
  auto reload_cycles = [&](int cycles) {
    for (int i = 0; i < cycles; ++i) {
      v1::ReloadResponse response;
      ASSERT_TRUE(Reload("m", versions[i % 2], &response).ok());
      ASSERT_TRUE(response.report().unmapped());
    }
  };
  reload_cycles(20);  // warm-up: allocator pools, gRPC buffers
  auto rss_before = common::ReadRssBytes(worker);
  auto maps_before = common::ReadMappings(worker);
  ASSERT_THAT(rss_before, IsOk());
  ASSERT_THAT(maps_before, IsOk());
  reload_cycles(200);
  auto rss_after = common::ReadRssBytes(worker);
  auto maps_after = common::ReadMappings(worker);
  ASSERT_THAT(rss_after, IsOk());
  ASSERT_THAT(maps_after, IsOk());
  EXPECT_EQ(Call("m", "version"), "v2");  // the last of 220 alternating reloads loads v2
  EXPECT_LT(static_cast<int64_t>(*rss_after) - static_cast<int64_t>(*rss_before), 2 << 20)
      << "RSS " << *rss_before << " -> " << *rss_after;
  EXPECT_LE(maps_after->size(), maps_before->size() + 2)
      << "mappings " << maps_before->size() << " -> " << maps_after->size();
  EXPECT_EQ(ModuleMappings(worker).size(), ModuleMappings(worker, "/m.v221.").size());
}

TEST_F(RelibdTest, SigtermStopsDaemonAndWorkerCleanly) {
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  pid_t worker = Status().modules(0).worker_pid();
  common::ExitStatus status = relibd_->Stop();
  EXPECT_TRUE(status.Success()) << status.ToString() << "\n" << relibd_->Log();
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(worker)));
  EXPECT_FALSE(std::filesystem::exists(relibd_->socket()));
}

}  // namespace
}  // namespace relib::testing
