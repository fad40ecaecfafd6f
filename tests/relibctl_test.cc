// relibctl as a user runs it: real binary, real daemon, exit codes and output.
#include <atomic>
#include <filesystem>
#include <thread>

#include "tests/relibd_process.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class RelibctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto relibd = RelibdProcess::Start();
    ASSERT_THAT(relibd, IsOk());
    relibd_ = std::move(relibd).value();
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- relibd log ----\n" << relibd_->Log();
  }
  std::unique_ptr<RelibdProcess> relibd_;
};

TEST_F(RelibctlTest, LoadCallReloadStatusUnload) {
  CommandResult r = relibd_->Ctl({"load", "hello", kHelloPath});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("module hello version 1 (loaded)"), HasSubstr("exports: greet")));

  r = relibd_->Ctl({"call", "hello", "greet", "cli"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Hello, cli!");  // exact bytes when stdout is not a terminal

  r = relibd_->Ctl({"call", "hello", "greet", "-"}, "from stdin");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Hello, from stdin!");

  r = relibd_->Ctl({"reload", "hello"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("version 2"), HasSubstr("unmapped: yes"), HasSubstr("before_unload: ok")));

  r = relibd_->Ctl({"status"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("hello"), HasSubstr("loaded"), HasSubstr(kHelloPath)));

  r = relibd_->Ctl({"status", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("\"name\":\"hello\""), HasSubstr("\"version\":\"2\""),
                           HasSubstr("\"state\":\"MODULE_STATE_LOADED\"")));

  r = relibd_->Ctl({"--json", "unload", "hello"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("\"unmapped\":true"), HasSubstr("\"version\":\"2\"")));
}

TEST_F(RelibctlTest, RelativePathsResolveAgainstTheCallersDirectory) {
  std::filesystem::path module(kHelloCPath);
  CommandResult r = RunCommand({"/bin/sh", "-c",
                                "cd " + module.parent_path().string() + " && " + kRelibctlPath + " --socket " +
                                    relibd_->socket() + " load c ./" + module.filename().string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("path: " + module.string()));
}

TEST_F(RelibctlTest, ModuleErrorsExitOneWithOneClearLine) {
  CommandResult r = relibd_->Ctl({"call", "ghost", "greet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "relibctl: call ghost greet: no module named 'ghost' [NOT_FOUND]\n");
  EXPECT_EQ(r.out, "");

  // A text file inside an allowed module directory (outside one, relibd as
  // root refuses it before looking: exit 4).
  std::string text = relibd_->dir() + "/hostname";
  std::filesystem::copy_file("/etc/hostname", text);
  r = relibd_->Ctl({"load", "x", text});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("not an ELF file"), HasSubstr("[INVALID_ARGUMENT]")));

  r = relibd_->Ctl({"load", "x", "/nonexistent.so"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("does not exist"));
}

TEST_F(RelibctlTest, UsageErrorsExitTwo) {
  EXPECT_EQ(relibd_->Ctl({}).exit_code, 2);
  EXPECT_EQ(relibd_->Ctl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(relibd_->Ctl({"load", "only-a-name"}).exit_code, 2);
  CommandResult help = relibd_->Ctl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, AllOf(HasSubstr("load"), HasSubstr("reload"), HasSubstr("status")));
}

TEST_F(RelibctlTest, UnreachableDaemonExitsThree) {
  CommandResult r = RunCommand({kRelibctlPath, "--socket", relibd_->dir() + "/nobody.sock",
                                "--connect-timeout-ms", "300", "status"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("cannot reach relibd"));
}

TEST_F(RelibctlTest, RefusedUnloadPrintsTheLiveThreads) {
  ASSERT_EQ(relibd_->Ctl({"load", "t", k_threads, "--thread-grace-ms", "200"}).exit_code, 0);
  ASSERT_EQ(relibd_->Ctl({"call", "t", "spawn_forever"}).exit_code, 0);
  CommandResult r = relibd_->Ctl({"unload", "t"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("[FAILED_PRECONDITION]"), HasSubstr("REFUSED"), HasSubstr("live thread: tid"),
                           HasSubstr("'forever'")));
  r = relibd_->Ctl({"--json", "unload", "t"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, AllOf(HasSubstr("\"refused\":true"), HasSubstr("\"name\":\"forever\"")));
}

TEST_F(RelibctlTest, UnloadReportShowsLeftovers) {
#ifdef RELIB_SANITIZED
  GTEST_SKIP() << "no heap tracking in a sanitizer build";
#endif
  ASSERT_EQ(relibd_->Ctl({"load", "f", k_fds, "--fd-policy", "close"}).exit_code, 0);
  ASSERT_EQ(relibd_->Ctl({"load", "l", k_leaks, "--capture-sites"}).exit_code, 0);
  ASSERT_EQ(relibd_->Ctl({"call", "f", "listen"}).exit_code, 0);
  ASSERT_EQ(relibd_->Ctl({"call", "l", "leak_malloc", "4096"}).exit_code, 0);
  CommandResult r = relibd_->Ctl({"unload", "f"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("unmapped: yes"), HasSubstr("fds left open: 1 (closed)"),
                           HasSubstr("socket tcp 127.0.0.1:")));
  r = relibd_->Ctl({"unload", "l"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("heap: leaked 4096 bytes in 1 block(s), left allocated"),
                           HasSubstr("4096 bytes in 1 block(s) at")));
  EXPECT_EQ(relibd_->Ctl({"load", "x", k_leaks, "--leak-policy", "maybe"}).exit_code, 2);
}

TEST_F(RelibctlTest, WorkerGroupsAndStagedReload) {
  ASSERT_EQ(relibd_->Ctl({"load", "a", kHelloPath, "--worker", "alpha"}).exit_code, 0);
  ASSERT_EQ(relibd_->Ctl({"load", "b", kHelloCPath}).exit_code, 0);
  CommandResult r = relibd_->Ctl({"status"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("worker 'alpha' pid"), HasSubstr("worker 'default' pid")));
  r = relibd_->Ctl({"reload", "a", k_crash_on_load, "--staged"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("scratch worker"), HasSubstr("production untouched")));
  r = relibd_->Ctl({"call", "a", "greet", "x"});
  EXPECT_EQ(r.out, "Hello, x!");
  r = relibd_->Ctl({"reload", "a", "--staged"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("version 2"));
}

TEST_F(RelibctlTest, EventsFollowsTheStream) {
  ASSERT_EQ(relibd_->Ctl({"load", "hello", kHelloPath}).exit_code, 0);
  // The stream only shows events from its start on: keep reloading until
  // relibctl has seen one.
  std::atomic<bool> done{false};
  std::thread reloader([&] {
    while (!done) {
      relibd_->Ctl({"reload", "hello"});
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  CommandResult r = relibd_->Ctl({"events", "--count", "1"});
  done = true;
  reloader.join();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("reloaded module=hello version="), HasSubstr("unmapped=yes")));
}

}  // namespace
}  // namespace relib::testing
