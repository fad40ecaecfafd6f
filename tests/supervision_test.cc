// Fault containment end to end: crashes and hangs in every phase cost only
// the worker; relibd restarts it, restores every module at its last good
// version with its state, other workers never notice, and events say so in
// order.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>

#include "tests/event_log.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class SupervisionTest : public RelibdTest {
 protected:
  void SetUp() override { StartDaemon({"--restart-backoff-ms", "50"}); }

  struct Scenario {
    const char* first_version;
    v1::ModuleOptions options;
    std::function<grpc::Status()> fault;
    grpc::StatusCode code;
    std::vector<std::string> message;
    std::string version_after;  // what export "version" answers once restored
  };

  // The common contract of every fault scenario.
  void Run(const Scenario& s) {
    v1::LoadResponse bystander;
    ASSERT_TRUE(Load("bystander", k_versioned_v2, &bystander, {}, "other").ok());
    v1::LoadResponse loaded;
    ASSERT_TRUE(Load("m", s.first_version, &loaded, s.options).ok());
    ASSERT_NE(loaded.module().worker_pid(), bystander.module().worker_pid());
    ASSERT_EQ(Call("m", "save", "precious"), "saved");
    EventLog events(relibd_->stub());

    grpc::Status status = s.fault();
    EXPECT_EQ(status.error_code(), s.code) << status.error_message();
    for (const std::string& part : s.message) EXPECT_THAT(status.error_message(), HasSubstr(part));

    EXPECT_FALSE(relibd_->process().TryReap().value().has_value()) << "relibd must stay up";
    EXPECT_EQ(Call("bystander", "version"), "v2");
    v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
    ASSERT_EQ(m.state(), v1::MODULE_STATE_LOADED) << m.last_error();
    EXPECT_EQ(m.version(), 1u);
    EXPECT_NE(m.worker_pid(), loaded.module().worker_pid());
    EXPECT_EQ(Call("m", "version"), s.version_after);
    EXPECT_EQ(Call("m", "load"), "precious");
    v1::StatusResponse now = Status();
    EXPECT_EQ(FindModule(now, "bystander")->worker_pid(), bystander.module().worker_pid());

    int exited = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_WORKER_EXITED; });
    int failed = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_FAILED && e.module() == "m"; });
    int started = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_WORKER_STARTED; }, exited);
    int restored = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_RESTARTED && e.module() == "m"; });
    EXPECT_GE(exited, 0);
    EXPECT_GT(failed, exited);
    EXPECT_GT(started, failed);
    EXPECT_GT(restored, started);
    for (const auto& e : events.Events()) EXPECT_NE(e.module(), "bystander") << e.DebugString();
  }

  grpc::Status CallStatus(const std::string& name, const std::string& export_name) {
    grpc::Status status;
    Call(name, export_name, "", &status);
    return status;
  }
};

TEST_F(SupervisionTest, SegvInOnLoadRollsBackToLastGoodVersion) {
  Run({k_versioned_v1, {}, [&] { return Reload("m", k_crash_on_load); }, grpc::StatusCode::UNAVAILABLE,
       {"SIGSEGV", "in code of module 'm'", "phase on_load"}, "v1"});
}

TEST_F(SupervisionTest, SegvInCall) {
  Run({k_versioned_v1, {}, [&] { return CallStatus("m", "crash"); }, grpc::StatusCode::UNAVAILABLE,
       {"SIGSEGV", "phase call of module 'm', export 'crash'"}, "v1"});
}

TEST_F(SupervisionTest, SegvInBeforeUnload) {
  Run({k_crash_before_unload, {}, [&] { return Reload("m", k_versioned_v2); }, grpc::StatusCode::UNAVAILABLE,
       {"SIGSEGV", "phase before_unload"}, "v3"});
}

TEST_F(SupervisionTest, AbortInCall) {
  Run({k_versioned_v1, {}, [&] { return CallStatus("m", "abort"); }, grpc::StatusCode::UNAVAILABLE,
       {"SIGABRT", "export 'abort'"}, "v1"});
}

TEST_F(SupervisionTest, ExitInCall) {
  Run({k_versioned_v1, {}, [&] { return CallStatus("m", "exit"); }, grpc::StatusCode::UNAVAILABLE,
       {"exited with code 3", "export 'exit'"}, "v1"});
}

TEST_F(SupervisionTest, InfiniteLoopInBeforeUnloadHitsItsDeadline) {
  v1::ModuleOptions options;
  options.set_before_unload_deadline_ms(300);
  Run({k_hang_before_unload, options, [&] { return Reload("m", k_versioned_v2); },
       grpc::StatusCode::DEADLINE_EXCEEDED, {"module 'm' exceeded its before_unload deadline of 300 ms", "SIGTERM"},
       "v3"});
}

TEST_F(SupervisionTest, MutexDeadlockInCallHitsItsDeadline) {
  v1::ModuleOptions options;
  options.set_call_deadline_ms(300);
  Run({k_versioned_v1, options, [&] { return CallStatus("m", "deadlock"); }, grpc::StatusCode::DEADLINE_EXCEEDED,
       {"exceeded its call deadline of 300 ms", "export 'deadlock'", "busy or hung"}, "v1"});
}

TEST_F(SupervisionTest, HangInOnLoadHitsItsDeadline) {
  v1::ModuleOptions options;
  options.set_on_load_deadline_ms(300);
  Run({k_versioned_v1, options, [&] { return Reload("m", k_hang_on_load); }, grpc::StatusCode::DEADLINE_EXCEEDED,
       {"exceeded its on_load deadline of 300 ms"}, "v1"});
}

TEST_F(SupervisionTest, ExternalSigkillIsReportedAndModulesComeBack) {
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_versioned_v1, &loaded).ok());
  ASSERT_EQ(Call("m", "save", "kept"), "saved");
  EventLog events(relibd_->stub());
  ASSERT_EQ(::kill(loaded.module().worker_pid(), SIGKILL), 0);  // what the OOM killer does
  int exited = -1;
  for (int i = 0; i < 500 && exited < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    exited = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_RESTARTED; });
  }
  ASSERT_GE(exited, 0) << "no restart";
  exited = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_WORKER_EXITED; });
  ASSERT_GE(exited, 0);
  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
  EXPECT_NE(m.worker_pid(), loaded.module().worker_pid());
  EXPECT_EQ(Call("m", "load"), "kept");
  EXPECT_THAT(events.Events()[exited].message(), AllOf(HasSubstr("SIGKILL"), HasSubstr("not sent by relibd")));
  // Nobody's code was running, so no module could be blamed: the death counts
  // against every module of the group (a group killed over and over ends failed).
  EXPECT_EQ(m.recent_crashes(), 1u);
}

TEST_F(SupervisionTest, FrozenWorkerIsToldApartFromBusyModuleCode) {
  v1::ModuleOptions options;
  options.set_call_deadline_ms(1500);
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_versioned_v1, &loaded, options).ok());
  std::thread freezer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ::kill(loaded.module().worker_pid(), SIGSTOP);
  });
  grpc::Status status = CallStatus("m", "hang");
  freezer.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("call deadline of 1500 ms"), HasSubstr("heartbeat had stopped")));
  EXPECT_EQ(WaitForState("m", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("m", "version"), "v1");
}

TEST_F(SupervisionTest, VersionThatCrashesOnEveryLoadEndsFailedAfterRTries) {
  relibd_.reset();
  StartDaemon({"--restart-backoff-ms", "50", "--max-restarts", "2"});
  ASSERT_TRUE(Load("peer", k_versioned_v2).ok());
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  for (int attempt = 1; attempt <= 3; ++attempt) {
    grpc::Status status = Reload("m", k_crash_on_load);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << attempt;
    v1::ModuleInfo m = WaitForState("m", attempt < 3 ? v1::MODULE_STATE_LOADED : v1::MODULE_STATE_FAILED);
    EXPECT_EQ(m.recent_crashes(), static_cast<uint32_t>(attempt));
    if (attempt < 3) {
      ASSERT_EQ(m.state(), v1::MODULE_STATE_LOADED) << attempt << ": " << m.last_error();
      EXPECT_EQ(Call("m", "version"), "v1");
    } else {
      ASSERT_EQ(m.state(), v1::MODULE_STATE_FAILED);
      EXPECT_THAT(m.last_error(), AllOf(HasSubstr("gave up"), HasSubstr("3 times")));
    }
  }
  // The others proceed.
  EXPECT_EQ(WaitForState("peer", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("peer", "version"), "v2");
  grpc::Status status;
  Call("m", "version", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The user can still bring it back with a good build.
  ASSERT_TRUE(Reload("m", k_versioned_v2).ok());
  EXPECT_EQ(Call("m", "version"), "v2");
}

TEST_F(SupervisionTest, RestoreThatCrashesEveryTimeEndsFailed) {
  ASSERT_TRUE(Load("peer", k_versioned_v2).ok());
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  ASSERT_EQ(Call("m", "save", "crash-on-load"), "saved");  // its next on_load will crash
  CallStatus("m", "crash");
  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_FAILED);
  ASSERT_EQ(m.state(), v1::MODULE_STATE_FAILED) << m.last_error();
  EXPECT_THAT(m.last_error(), AllOf(HasSubstr("gave up"), HasSubstr("phase on_load")));
  EXPECT_EQ(m.recent_crashes(), 4u);  // the call, then three restores
  EXPECT_EQ(WaitForState("peer", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("peer", "version"), "v2");
}

// A crash loop in one group never stops relibd (it used to exit 3 past a
// daemon-wide death limit, taking every healthy group down): only failing to
// start any worker does (crash_loop_test.cc).
TEST_F(SupervisionTest, DaemonStaysUpWhenOneGroupsWorkersKeepDying) {
  relibd_.reset();
  StartDaemon({"--restart-backoff-ms", "20", "--max-restarts", "100"});
  v1::LoadResponse bystander;
  ASSERT_TRUE(Load("bystander", k_versioned_v2, &bystander, {}, "other").ok());
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(WaitForState("m", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED) << i;
    EXPECT_EQ(CallStatus("m", "crash").error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  ASSERT_EQ(WaitForState("m", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("m", "version"), "v1");
  EXPECT_FALSE(relibd_->process().TryReap().value().has_value()) << "relibd must stay up";
  EXPECT_EQ(FindModule(Status(), "bystander")->worker_pid(), bystander.module().worker_pid());
  EXPECT_EQ(Call("bystander", "version"), "v2");
}

TEST_F(SupervisionTest, StagedReloadNeverTouchesProduction) {
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_versioned_v1, &loaded).ok());
  pid_t production = loaded.module().worker_pid();
  EventLog events(relibd_->stub());
  v1::ReloadRequest request;
  request.set_name("m");
  request.set_path(k_crash_on_load);
  request.set_staged(true);
  v1::ReloadResponse response;
  {
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Reload(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), AllOf(HasSubstr("scratch worker"), HasSubstr("production untouched"),
                                              HasSubstr("SIGSEGV")));
  }
  request.set_path(k_fail_self_test);
  {
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Reload(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNKNOWN);
    EXPECT_THAT(status.error_message(), HasSubstr("database schema too new"));
  }
  v1::StatusResponse now = Status();
  EXPECT_EQ(FindModule(now, "m")->worker_pid(), production);
  EXPECT_EQ(FindModule(now, "m")->version(), 1u);
  EXPECT_EQ(Call("m", "version"), "v1");
  for (const auto& e : events.Events()) {
    EXPECT_FALSE(e.kind() == v1::EVENT_KIND_WORKER_EXITED && e.worker_pid() == production) << e.DebugString();
  }
  request.set_path(k_versioned_v2);
  grpc::ClientContext context;
  ASSERT_TRUE(relibd_->stub().Reload(&context, request, &response).ok());
  EXPECT_EQ(response.module().worker_pid(), production);
  EXPECT_EQ(Call("m", "version"), "v2");
}

TEST_F(SupervisionTest, StateSavedInBeforeUnloadReachesTheNextVersion) {
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  EXPECT_EQ(Call("m", "farewell"), "<none>");
  ASSERT_TRUE(Reload("m", k_versioned_v2).ok());
  EXPECT_EQ(Call("m", "farewell"), "from v1");
  // relibd has it too: a crash of the new version brings it back.
  CallStatus("m", "crash");
  ASSERT_EQ(WaitForState("m", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(Call("m", "farewell"), "from v1");
}

TEST_F(SupervisionTest, StateSurvivesReloadAndDaemonRestartWithStateDir) {
  std::string state_dir = relibd_->dir() + "/state";
  relibd_.reset();
  StartDaemon({"--state-dir", state_dir});
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  ASSERT_EQ(Call("m", "save", "across restarts"), "saved");
  ASSERT_TRUE(Reload("m", k_versioned_v2).ok());
  EXPECT_EQ(Call("m", "load"), "across restarts");
  EXPECT_TRUE(relibd_->Stop().Success());
  relibd_.reset();
  StartDaemon({"--state-dir", state_dir});
  // The state dir keeps the module table too (issue 9): "m" is back at
  // version 2 without a Load, with its state.
  EXPECT_EQ(Load("m", k_versioned_v1).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Call("m", "version"), "v2");
  EXPECT_EQ(Call("m", "load"), "across restarts");
}

// A client hammering the service while it is reloaded 50 times and crashed
// once: no connection is refused and the counter never goes backwards.
TEST_F(SupervisionTest, CounterServiceSurvivesReloadsAndACrash) {
  ASSERT_TRUE(Load("counter", kCounterServicePath).ok());
  int port = std::stoi(Call("counter", "port"));
  std::atomic<bool> done{false};
  std::atomic<int> refused{0}, answered{0}, backwards{0}, errors{0};
  std::thread client([&] {
    long last = 0;
    while (!done) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      timeval timeout{10, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(static_cast<uint16_t>(port));
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
        ++refused;
      } else {
        char buffer[32] = {};
        ssize_t n = ::recv(fd, buffer, sizeof(buffer) - 1, 0);
        if (n > 0) {
          long value = std::atol(buffer);
          if (value <= last) ++backwards;
          last = value;
          ++answered;
        } else {
          ++errors;  // the connection that was being served when the worker crashed
        }
      }
      ::close(fd);
    }
  });
  for (int i = 0; i < 50; ++i) {
    v1::ReloadResponse response;
    grpc::Status status = Reload("counter", "", &response);
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
    ASSERT_TRUE(response.report().unmapped()) << response.report().DebugString();
    EXPECT_TRUE(response.report().live_threads().empty());
  }
  int before_crash = answered;
  long count_before = std::stol(Call("counter", "count"));
  grpc::Status crashed;
  Call("counter", "crash", "", &crashed);
  EXPECT_EQ(crashed.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(WaitForState("counter", v1::MODULE_STATE_LOADED).state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(std::stoi(Call("counter", "port")), port);
  for (int i = 0; i < 200 && answered < before_crash + 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  done = true;
  client.join();
  std::cerr << "answered " << answered << " (" << before_crash << " during 50 reloads), refused " << refused
            << ", reset by the crash " << errors << "\n";
  EXPECT_GT(before_crash, 50);  // the client really overlapped the reloads
  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(backwards.load(), 0);
  EXPECT_LE(errors.load(), 1);
  EXPECT_GT(answered.load(), before_crash);
  EXPECT_GE(std::stol(Call("counter", "count")), count_before);
}

}  // namespace
}  // namespace relib::testing
