// relib's own test scenarios (xxshady/relib, testing/host and testing/module),
// written fresh for relibd: each test names the relib file it mirrors. relib
// calls a typed `main` right after load; here an ordinary export is called
// instead, and relib's typed imports become relibd's host API. Scenarios that
// need features relibd does not have are adapted as described in each test.
// The Windows-only scenarios (dbghelp_is_already_loaded_panic,
// dbghelp_is_already_loaded_init, windows_background_threads,
// windows_background_threads_fail) are not ported; the Linux analogue of
// windows_background_threads is at the end.
#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr size_t k200MiB = 200u << 20;

int64_t StatusField(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

class RelibScenariosTest : public RelibdTest {
 protected:
  // relib's `unloading` moves 200 MiB through a call's output.
  void SetUp() override {
    StartDaemon({"--max-message-mb", "256"});
    grpc::ChannelArguments arguments;
    arguments.SetMaxReceiveMessageSize(256 << 20);
    big_stub_ = v1::Relibd::NewStub(grpc::CreateCustomChannel(
        "unix:" + relibd_->socket(), grpc::InsecureChannelCredentials(), arguments));
  }
  std::string BigCall(const std::string& name, const std::string& export_name) {
    v1::CallRequest request;
    request.set_name(name);
    request.set_export_name(export_name);
    v1::CallResponse response;
    grpc::ClientContext context;
    grpc::Status status = big_stub_->Call(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.output();
  }

  std::unique_ptr<v1::Relibd::Stub> big_stub_;
};

// Mirrors testing/host/src/unloading.rs (module testing/module/src/unloading.rs,
// shared.rs): every export shape, 600 MiB of thread-locals on the calling
// thread and 200 MiB on another, 200 MiB out through the call, a 200 MiB leak
// (relib always frees leaks: --leak-policy free), the host API in place of
// typed imports, statics reset by every load, and the worker's memory back
// where it was after each measured cycle (relib: VmSize equal; here within a
// few MiB: relibd's own bookkeeping is in the same process).
TEST_F(RelibScenariosTest, Unloading) {
  SKIP_UNDER_SANITIZER();  // heap tracking and the memory measurement need the agent's malloc
  std::string marker = relibd_->dir() + "/tls-marker";
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  v1::ModuleOptions options;
  options.set_leak_policy(v1::LEAK_POLICY_FREE);
  auto cycle = [&](int n) {
    ASSERT_EQ(LoadOrDie("m", k_relib_scenarios, options), worker);
    EXPECT_EQ(Call("m", "echo", "owned"), "owned");
    EXPECT_EQ(Call("m", "tail", "borrowed"), "orrowed");
    EXPECT_EQ(Call("m", "check_ones", std::string(100, '1')), "ok");
    EXPECT_THAT(Call("m", "check_ones", "nope"), HasSubstr("expected 100 x '1'"));
    int32_t max = INT32_MAX, min = INT32_MIN;
    EXPECT_EQ(Call("m", "i32_max_in", std::string(reinterpret_cast<char*>(&max), 4)), "ok");
    EXPECT_EQ(Call("m", "i32_min_roundtrip", std::string(reinterpret_cast<char*>(&min), 4)),
              std::string(reinterpret_cast<char*>(&min), 4));
    EXPECT_EQ(Call("m", "thread_locals", marker), "ok");
    std::string memory = BigCall("m", "alloc_mem");
    EXPECT_EQ(memory.size(), k200MiB);
    EXPECT_EQ(memory.find_first_not_of('\1'), std::string::npos);
    memory = std::string();
    EXPECT_EQ(Call("m", "leak"), std::to_string(k200MiB));
    EXPECT_EQ(Call("m", "call_host"), "ok");
    EXPECT_EQ(Call("m", "only_called_once"), "1");
    EXPECT_EQ(Call("m", "only_called_once"), "0");
    v1::UnloadResponse response;
    ASSERT_TRUE(Unload("m", &response).ok());
    const v1::UnloadReport& report = response.report();
    EXPECT_TRUE(report.unmapped());
    EXPECT_EQ(report.live_threads_size(), 0);
    EXPECT_GE(report.heap().leaked_bytes(), static_cast<int64_t>(k200MiB));
    EXPECT_TRUE(report.heap().freed());
    EXPECT_GE(report.tls().destructors_run(), 3);  // the calling thread's, run at unload
    // The first thread-local's destructor ran on the worker's thread during the unload.
    std::string expected;
    for (int i = 0; i <= n; ++i) expected += "tls-dtor;";
    EXPECT_EQ(ReadAll(marker), expected);
  };
  for (int warm_up = 0; warm_up < 3; ++warm_up) cycle(warm_up);
  for (int measured = 3; measured < 5; ++measured) {
    int64_t size_before = StatusField(worker, "VmSize"), rss_before = StatusField(worker, "VmRSS");
    cycle(measured);
    int64_t size_after = StatusField(worker, "VmSize"), rss_after = StatusField(worker, "VmRSS");
    EXPECT_LE(size_after - size_before, 8 << 20) << "VmSize " << size_before << " -> " << size_after;
    EXPECT_LE(rss_after - rss_before, 8 << 20) << "VmRSS " << rss_before << " -> " << rss_after;
  }
  EXPECT_EQ(Call("bystander", "version"), "v1");
}

// Mirrors testing/host/src/no_unloading.rs: a module that is never unloaded;
// the process ends with it loaded, cleanly.
TEST_F(RelibScenariosTest, NoUnloading) {
  LoadOrDie("m", k_relib_scenarios);
  EXPECT_EQ(Call("m", "main_default"), "");
  common::ExitStatus status = relibd_->Stop();
  EXPECT_TRUE(status.Success()) << status.ToString();
  std::istringstream log(relibd_->Log());
  for (std::string line; std::getline(log, line);) {
    if (line.find("phase=exit") != std::string::npos) EXPECT_THAT(line, Not(HasSubstr("signal")));
  }
}

// Mirrors testing/host/src/exportify.rs with its four variants (default,
// ret_primitive_main, ret_heap_main, panic_main): what `main` returns, or
// that its panic is caught and the process carries on.
TEST_F(RelibScenariosTest, Exportify) {
  pid_t worker = LoadOrDie("m", k_relib_scenarios);
  grpc::Status status;
  EXPECT_EQ(Call("m", "main_default", "", &status), "");
  EXPECT_TRUE(status.ok());
  std::string primitive = Call("m", "main_ret_primitive");
  ASSERT_EQ(primitive.size(), 8u);
  uint64_t value;
  std::memcpy(&value, primitive.data(), 8);
  EXPECT_EQ(value, UINT64_MAX);
  EXPECT_EQ(Call("m", "main_ret_heap"), "ret_heap_main");
  Call("m", "main_panic", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_THAT(status.error_message(), HasSubstr("main panicked on purpose"));
  EXPECT_EQ(Call("m", "main_default", "", &status), "");
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(FindModule(Status(), "m")->worker_pid(), worker);
}

// Mirrors testing/host/src/threads_check.rs (module threads_check.rs): a
// detached thread sleeping for ever refuses the unload; the module serves on.
TEST_F(RelibScenariosTest, ThreadsCheck) {
  v1::ModuleOptions options;
  options.set_thread_grace_ms(100);
  LoadOrDie("m", k_relib_scenarios, options);
  EXPECT_EQ(Call("m", "spawn_sleeper"), "started");
  v1::UnloadResponse response;
  grpc::Status status = Unload("m", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("1 running thread"));
  EXPECT_TRUE(response.report().refused());
  EXPECT_EQ(response.report().live_threads_size(), 1);
  EXPECT_EQ(Call("m", "echo", "still here"), "still here");
}

// Mirrors testing/host/src/before_unload_panic.rs: before_unload throws, so
// the unload is refused and the module stays; forced, it goes.
TEST_F(RelibScenariosTest, BeforeUnloadPanic) {
  LoadOrDie("m", k_relib_scenarios_before_unload_throws);
  v1::UnloadResponse response;
  grpc::Status status = Unload("m", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("before_unload"), HasSubstr("panicked on purpose")));
  EXPECT_EQ(Call("m", "echo", "alive"), "alive");
  ASSERT_TRUE(Unload("m", &response, /*force=*/true).ok());
  EXPECT_TRUE(response.report().unmapped());
  EXPECT_THAT(response.report().before_unload_error(), HasSubstr("panicked on purpose"));
}

// Mirrors testing/host/src/multiple_modules.rs (runner multiple_modules.rs):
// ten copies of the module loaded, called and unloaded from ten threads at
// once — in one worker, then in ten.
TEST_F(RelibScenariosTest, MultipleModules) {
  for (bool own_workers : {false, true}) {
    std::vector<std::string> copies;
    for (int i = 0; i < 10; ++i) copies.push_back(Copy(k_relib_scenarios, "copy_" + std::to_string(i) + ".so"));
    std::atomic<int> unmapped{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 10; ++i) {
      threads.emplace_back([&, i] {
        std::string name = "m" + std::to_string(i);
        v1::LoadResponse loaded;
        grpc::Status status = Load(name, copies[i], &loaded, {}, own_workers ? "g" + std::to_string(i) : "");
        ASSERT_TRUE(status.ok()) << status.error_message();
        EXPECT_GT(std::stoi(Call(name, "tid")), 0);
        v1::UnloadResponse response;
        ASSERT_TRUE(Unload(name, &response).ok());
        if (response.report().unmapped()) ++unmapped;
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(unmapped, 10) << (own_workers ? "one worker each" : "one worker");
    EXPECT_EQ(Status().modules_size(), 0);
  }
}

// Mirrors testing/host/src/panic_in_interface_module.rs: an export panics;
// the caller gets the panic as an error and nothing else is disturbed.
TEST_F(RelibScenariosTest, PanicInInterfaceModule) {
  pid_t worker = LoadOrDie("m", k_relib_scenarios);
  grpc::Status status;
  Call("m", "panic", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_THAT(status.error_message(), HasSubstr("expected panic"));
  EXPECT_EQ(Call("m", "echo", "next"), "next");
  EXPECT_EQ(FindModule(Status(), "m")->worker_pid(), worker);
}

// Mirrors testing/host/src/is_already_loaded_error.rs. relib keys modules by
// path, relibd by name: the same path under a second name is another module.
TEST_F(RelibScenariosTest, IsAlreadyLoadedError) {
  ASSERT_TRUE(Load("m", k_relib_scenarios).ok());
  EXPECT_EQ(Load("m", k_relib_scenarios).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(Unload("m").ok());
  ASSERT_TRUE(Load("m", k_relib_scenarios).ok());
  EXPECT_TRUE(Load("m2", k_relib_scenarios).ok());
  EXPECT_EQ(Call("m", "only_called_once"), "1");
  EXPECT_EQ(Call("m2", "only_called_once"), "1");  // its own copy, its own statics
}

// Mirrors testing/host/src/parallel_module_loading.rs: 300 loads of one
// module at once; exactly one wins, the others are told it is loaded.
TEST_F(RelibScenariosTest, ParallelModuleLoading) {
  constexpr int kLoads = 300;
  std::atomic<int> ok{0}, already{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kLoads; ++i) {
    threads.emplace_back([&] {
      grpc::Status status = Load("p", k_relib_scenarios);
      if (status.ok()) {
        ++ok;
      } else if (status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
        ++already;
      } else {
        ++other;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok, 1);
  EXPECT_EQ(already, kLoads - 1);
  EXPECT_EQ(other, 0);
  EXPECT_EQ(Call("p", "echo", "served"), "served");
  EXPECT_EQ(Status().workers_size(), 1);
}

// The Linux analogue of testing/host/src/windows_background_threads.rs (a
// Windows-only scenario, not counted): threads are charged to the module that
// started them, so one module's parked threads never block another's unload.
TEST_F(RelibScenariosTest, LinuxAnalogueOfWindowsBackgroundThreads) {
  LoadOrDie("a", k_relib_scenarios);
  LoadOrDie("b", k_relib_scenarios);
  EXPECT_EQ(Call("a", "spawn_parked", "3"), "parked");
  EXPECT_EQ(Call("b", "spawn_parked", "5"), "parked");
  EXPECT_EQ(Call("b", "join_parked"), "joined");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("b", &response).ok());
  EXPECT_TRUE(response.report().unmapped());
  EXPECT_EQ(response.report().live_threads_size(), 0);
  EXPECT_EQ(Call("a", "join_parked"), "joined");
  ASSERT_TRUE(Unload("a", &response).ok());
  EXPECT_TRUE(response.report().unmapped());
}

}  // namespace
}  // namespace relib::testing
