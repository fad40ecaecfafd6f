// Paths back into a module's code left in process-wide state (signal
// handlers, timers, exit and fork handlers, C++ and libc hooks, cookie
// streams, printf specifiers, dlopen'ed libraries): after "unmapped: yes"
// none of them may lead into the unmapped code. Real relibd, real worker, the
// test module tests/testcases/code_paths.cc; effects checked by signalling and
// forking the worker and by stopping relibd.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::Property;
using ::testing::HasSubstr;
using ::testing::Not;

class CodePathsTest : public RelibdTest {
 protected:
  v1::UnloadReport UnloadOrDie(const std::string& name) {
    v1::UnloadResponse response;
    grpc::Status status = Unload(name, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(response.report().unmapped()) << response.report().DebugString();
    return response.report();
  }
  static bool Alive(pid_t pid) { return ::kill(pid, 0) == 0; }
  // The worker still serves: same pid, a module loaded in it answers.
  void ExpectWorkerServes(pid_t worker) {
    EXPECT_TRUE(Alive(worker));
    EXPECT_EQ(Call("bystander", "version"), "v1");
    v1::StatusResponse status = Status();
    const v1::ModuleInfo* info = FindModule(status, "bystander");
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->worker_pid(), worker);
    EXPECT_EQ(info->state(), v1::MODULE_STATE_LOADED);
  }
  // Stops relibd and returns what it logged about its workers' ends.
  std::string StopAndCollectWorkerExits() {
    relibd_->Stop();
    std::string exits;
    std::istringstream log(relibd_->Log());
    for (std::string line; std::getline(log, line);) {
      if (line.find("phase=exit") != std::string::npos) exits += line + "\n";
    }
    return exits;
  }
};

auto Reference(const std::string& kind, const std::string& description, const std::string& action) {
  return AllOf(Property(&v1::CodeReference::kind, kind), Property(&v1::CodeReference::description, HasSubstr(description)),
               Property(&v1::CodeReference::action, action));
}

TEST_F(CodePathsTest, SignalHandlersAreRestoredAtUnload) {
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  ASSERT_EQ(LoadOrDie("m", k_code_paths), worker);
  ASSERT_EQ(Call("m", "sigaction"), "installed");
  ASSERT_EQ(Call("m", "signal"), "installed");
  ASSERT_EQ(Call("m", "raw_sigaction"), "installed");
  ASSERT_EQ(::kill(worker, SIGWINCH), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(Call("m", "signals_seen"), "1");  // the module's handler ran while loaded
  v1::UnloadReport report = UnloadOrDie("m");
  EXPECT_THAT(report.code_references(), Contains(Reference("signal handler", "SIGWINCH", "restored")));
  EXPECT_THAT(report.code_references(), Contains(Reference("signal handler", "SIGURG", "restored")));
  EXPECT_THAT(report.code_references(), Contains(Reference("signal handler", "SIGCONT", "reset")));
  // All three signals ignore by default: the worker shrugs them off, where a
  // handler left in unmapped code would kill it with SIGSEGV.
  for (int signal : {SIGWINCH, SIGURG, SIGCONT}) ASSERT_EQ(::kill(worker, signal), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ExpectWorkerServes(worker);
}

// Handlers that chain through several modules, one installed with the old
// disposition written into the very struct it passed: unloading in any order
// never puts back a handler of a module already gone.
TEST_F(CodePathsTest, ChainedHandlersNeverResurrectAnUnloadedOne) {
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  LoadOrDie("a", k_code_paths);
  LoadOrDie("b", k_code_paths);
  ASSERT_EQ(Call("a", "sigaction"), "installed");
  ASSERT_EQ(Call("b", "sigaction_aliased"), "installed");
  UnloadOrDie("a");
  LoadOrDie("c", k_code_paths);
  ASSERT_EQ(Call("c", "sigaction"), "installed");
  UnloadOrDie("c");
  ASSERT_EQ(::kill(worker, SIGWINCH), 0);  // b's handler: b is still loaded
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(Call("b", "signals_seen"), "1");
  UnloadOrDie("b");
  ASSERT_EQ(::kill(worker, SIGWINCH), 0);  // the host's again: ignored
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ExpectWorkerServes(worker);
}

// A module stopped with relibd while loaded, its thread_local destructors
// pending on the worker's command thread: they run before its dlclose, not
// at exit into unmapped code.
TEST_F(CodePathsTest, StopWithAModuleLoadedRunsItsThreadLocalDestructorsFirst) {
  LoadOrDie("t", k_tls);
  ASSERT_EQ(Call("t", "use_here", "x"), "65");
  std::string exits = StopAndCollectWorkerExits();
  EXPECT_THAT(exits, Not(HasSubstr("signal"))) << exits;
}

TEST_F(CodePathsTest, SignalHandlerSetBehindTheAgentsBackRefusesUnderRefusePolicy) {
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  v1::ModuleOptions options;
  options.set_signal_policy(v1::SIGNAL_POLICY_REFUSE);
  LoadOrDie("m", k_code_paths, options);
  ASSERT_EQ(Call("m", "raw_sigaction"), "installed");
  v1::UnloadResponse response;
  grpc::Status status = Unload("m", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("SIGCONT"), HasSubstr("keeps running")));
  EXPECT_TRUE(response.report().refused());
  EXPECT_THAT(response.report().code_references(), Contains(Reference("signal handler", "SIGCONT", "refused")));
  // Still loaded, still answering, its handler still its own.
  EXPECT_EQ(Call("m", "signals_seen"), "0");
  ASSERT_EQ(::kill(worker, SIGCONT), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(Call("m", "signals_seen"), "1");
  ExpectWorkerServes(worker);
}

TEST_F(CodePathsTest, RealtimeSignalHandlerSetBehindTheAgentsBackRefusesUnderRefusePolicy) {
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  v1::ModuleOptions options;
  options.set_signal_policy(v1::SIGNAL_POLICY_REFUSE);
  LoadOrDie("m", k_code_paths, options);
  ASSERT_EQ(Call("m", "raw_rt_sigaction"), "installed");
  v1::UnloadResponse response;
  grpc::Status status = Unload("m", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("keeps running"));
  EXPECT_TRUE(response.report().refused());
  EXPECT_THAT(response.report().code_references(),
              Contains(Reference("signal handler", absl::StrCat("signal ", SIGRTMIN + 1), "refused")));
  ExpectWorkerServes(worker);
}

TEST_F(CodePathsTest, TimersAreDeletedAtUnload) {
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  LoadOrDie("m", k_code_paths);
  ASSERT_EQ(Call("m", "timer"), "armed");
  for (int i = 0; i < 200 && Call("m", "ticks") == "0"; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_NE(Call("m", "ticks"), "0");
  v1::UnloadReport report = UnloadOrDie("m");
  EXPECT_THAT(report.code_references(), Contains(Reference("timer", "SIGEV_THREAD", "deleted")));
  // The timer fired every 5 ms: a live one would have entered unmapped code by now.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ExpectWorkerServes(worker);
}

TEST_F(CodePathsTest, ExitHandlersRunAtUnloadNotAtExit) {
  std::string marker = relibd_->dir() + "/exit-marker";
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  LoadOrDie("m", k_code_paths);
  ASSERT_EQ(Call("m", "exit_handlers", marker), "registered");
  EXPECT_EQ(ReadAll(marker), "");
  v1::UnloadReport report = UnloadOrDie("m");
  // Newest first, as at exit; while the code was still mapped.
  EXPECT_EQ(ReadAll(marker), "cxa_atexit;on_exit;");
  EXPECT_THAT(report.code_references(), Contains(Reference("exit handler", "on_exit", "ran")));
  EXPECT_THAT(report.code_references(), Contains(Reference("exit handler", "__cxa_atexit", "ran")));
  ExpectWorkerServes(worker);
  // An orderly stop: the worker exits normally, nothing runs twice.
  std::string exits = StopAndCollectWorkerExits();
  EXPECT_THAT(exits, Not(HasSubstr("signal"))) << exits;
  EXPECT_EQ(ReadAll(marker), "cxa_atexit;on_exit;");
}

TEST_F(CodePathsTest, ExitHandlersOfAModuleStillLoadedRunAtExit) {
  std::string marker = relibd_->dir() + "/exit-marker";
  LoadOrDie("m", k_code_paths);
  ASSERT_EQ(Call("m", "exit_handlers", marker), "registered");
  std::string exits = StopAndCollectWorkerExits();
  EXPECT_THAT(exits, Not(HasSubstr("signal"))) << exits;
  EXPECT_EQ(ReadAll(marker), "cxa_atexit;on_exit;");
}

TEST_F(CodePathsTest, ForkHandlersAreUnregisteredAtUnload) {
  std::string marker = relibd_->dir() + "/fork-marker";
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  LoadOrDie("m", k_code_paths);
  LoadOrDie("prober", k_code_paths);
  ASSERT_EQ(Call("m", "exit_handlers", marker), "registered");  // sets the marker path
  ASSERT_EQ(Call("m", "atfork"), "registered");
  ASSERT_EQ(Call("prober", "fork"), "forked");
  EXPECT_THAT(ReadAll(marker), HasSubstr("prepare;"));  // registered and working
  v1::UnloadReport report = UnloadOrDie("m");
  EXPECT_THAT(report.code_references(), Contains(Reference("fork handler", "", "unregistered")));
  // A fork after the unload calls no handler of the unloaded module.
  EXPECT_EQ(Call("prober", "fork"), "forked");
  ExpectWorkerServes(worker);
}

TEST_F(CodePathsTest, TerminateAndNewHandlersAreReset) {
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  LoadOrDie("m", k_code_paths);
  LoadOrDie("prober", k_code_paths);
  ASSERT_EQ(Call("m", "handlers"), "set");
  EXPECT_THAT(Call("prober", "handler_owners"), HasSubstr("m.v1."));  // the module's copy
  v1::UnloadReport report = UnloadOrDie("m");
  EXPECT_THAT(report.code_references(), Contains(Reference("terminate handler", "", "reset")));
  EXPECT_THAT(report.code_references(), Contains(Reference("new handler", "", "reset")));
  // Back to the host's: libstdc++'s terminate handler, no new handler.
  EXPECT_EQ(Call("prober", "handler_owners"), "libstdc++.so.6 none");
  ExpectWorkerServes(worker);
}

TEST_F(CodePathsTest, CookieStreamsAreClosedAndPrintfSpecifiersDropped) {
  std::string marker = relibd_->dir() + "/cookie-marker";
  pid_t worker = LoadOrDie("bystander", k_versioned_v1);
  LoadOrDie("m", k_code_paths);
  LoadOrDie("prober", k_code_paths);
  ASSERT_EQ(Call("m", "cookie", marker), "opened");
  ASSERT_EQ(Call("m", "register_printf"), "registered");
  EXPECT_EQ(Call("prober", "printf_w"), "[<W>]");
  v1::UnloadReport report = UnloadOrDie("m");
  // Closing flushed the buffered bytes through the module's write function.
  EXPECT_EQ(ReadAll(marker), "cookie-write;");
  EXPECT_THAT(report.code_references(), Contains(Reference("cookie FILE", "fopencookie", "closed")));
  EXPECT_THAT(report.code_references(), Contains(Reference("printf specifier", "%W", "unregistered")));
  EXPECT_NE(Call("prober", "printf_w"), "[<W>]");  // no longer the unloaded module's converter
  ExpectWorkerServes(worker);
  std::string exits = StopAndCollectWorkerExits();
  EXPECT_THAT(exits, Not(HasSubstr("signal"))) << exits;
}

TEST_F(CodePathsTest, DlopenedLibrariesAreNamedAndClosedByPolicy) {
  // Report policy: the module's own dlopen of its file is named as the pin.
  LoadOrDie("self", k_self_dlopen);
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("self", &response).ok());
  EXPECT_FALSE(response.report().unmapped());
  ASSERT_EQ(response.report().libraries_size(), 1);
  EXPECT_THAT(response.report().libraries(0).path(), HasSubstr("self.v1."));
  EXPECT_EQ(response.report().libraries(0).references(), 1);
  EXPECT_FALSE(response.report().libraries_closed());
  EXPECT_THAT(response.report().pin_reasons(), Contains(HasSubstr("dlopen'ed its own file")));

  // Close policy: the reference is dropped and the module unmaps.
  v1::ModuleOptions options;
  options.set_dlopen_policy(v1::DLOPEN_POLICY_CLOSE);
  pid_t worker = LoadOrDie("self2", k_self_dlopen, options);
  ASSERT_TRUE(Unload("self2", &response).ok());
  EXPECT_TRUE(response.report().libraries_closed());
  EXPECT_TRUE(response.report().unmapped()) << response.report().DebugString();
  EXPECT_THAT(ModuleMappings(worker, "self2.v1."), ::testing::IsEmpty());
}

TEST_F(CodePathsTest, RelibctlPrintsPathsBackIntoCode) {
  LoadOrDie("m", k_code_paths);
  ASSERT_EQ(Call("m", "timer"), "armed");
  CommandResult result = relibd_->Ctl({"unload", "m"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out + result.err, AllOf(HasSubstr("paths back into its code: 1"), HasSubstr("timer"),
                                             HasSubstr("(deleted)")));
}

}  // namespace
}  // namespace relib::testing
