// Frees of memory a module does not own (issue 14 item 4), end to end: the
// bad free is caught at the free, blamed on the module that made it and
// counted against it alone; frees the module is entitled to never are.
// Port of relib's dealloc_validation scenario
// (testing/host/src/dealloc_validation.rs, testing/module/src/dealloc_validation.rs,
// testing/runner/src/dealloc_validation.rs): there the module frees 0x1 and
// the host process must die with relib's "invalid pointer passed to dealloc"
// message naming the module; here the worker dies of SIGABRT blamed on the
// module (the daemon and other groups live on), or, with --invalid-free
// leak, the free is refused, logged and the module keeps running.
#include <chrono>
#include <string>
#include <thread>

#include "tests/event_log.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class DeallocTest : public RelibdTest {
 protected:
  static bool WorkerExited(const v1::Event& e) { return e.kind() == v1::EVENT_KIND_WORKER_EXITED; }
  pid_t WorkerOf(const std::string& name) {
    const v1::ModuleInfo* info = FindModule(Status(), name);
    return info ? info->worker_pid() : 0;
  }
};

// Long enough that std::string keeps it on the heap: `in` is the start of a
// host-owned block.
const std::string kInput(200, 'i');

// Before the fix the call succeeded; the worker died later (when the host
// freed the buffer again) with no module named, and every module of the group
// was restarted for nothing, each time.
TEST_F(DeallocTest, FreeingTheCallInputFailsTheCallAndIsChargedToTheModule) {
  SKIP_UNDER_SANITIZER();
  ASSERT_TRUE(Load("bystander", k_versioned_v2, nullptr, {}, "other").ok());
  ASSERT_TRUE(Load("neighbour", k_versioned_v1, nullptr, {}, "shared").ok());
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded, {}, "shared").ok());
  pid_t bystander = WorkerOf("bystander");
  EventLog events(relibd_->stub());

  grpc::Status status;
  std::string out = Call("m", "free_input", kInput, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << out;
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("killed by signal 6 (SIGABRT)"), HasSubstr("in code of module 'm'"),
                    HasSubstr("invalid free"), HasSubstr("owned by the host"), HasSubstr("export 'free_input'")));
  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
  EXPECT_NE(m.worker_pid(), loaded.module().worker_pid());
  EXPECT_EQ(m.recent_crashes(), 1u);
  v1::ModuleInfo neighbour = WaitForState("neighbour", v1::MODULE_STATE_LOADED);
  EXPECT_EQ(neighbour.recent_crashes(), 0u) << "the death is m's, not its neighbour's";
  EXPECT_EQ(Call("neighbour", "version"), "v1");

  // Default restart intensity: 3 restarts per window, the 4th death fails m.
  for (int death = 2; death <= 4; ++death) {
    Call("m", "free_input", kInput, &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << death;
    if (death < 4) WaitForState("m", v1::MODULE_STATE_LOADED);
  }
  m = WaitForState("m", v1::MODULE_STATE_FAILED);
  EXPECT_EQ(m.state(), v1::MODULE_STATE_FAILED) << m.last_error();
  EXPECT_THAT(m.last_error(), AllOf(HasSubstr("gave up"), HasSubstr("invalid free")));
  neighbour = WaitForState("neighbour", v1::MODULE_STATE_LOADED);
  EXPECT_EQ(neighbour.state(), v1::MODULE_STATE_LOADED) << neighbour.last_error();
  EXPECT_EQ(Call("neighbour", "version"), "v1");
  EXPECT_EQ(Call("bystander", "version"), "v2");
  EXPECT_EQ(WorkerOf("bystander"), bystander) << "another group never restarts";

  auto exits = events.All(WorkerExited);
  EXPECT_EQ(exits.size(), 4u);
  for (const auto& e : exits) EXPECT_THAT(e.message(), HasSubstr("in code of module 'm'"));
  for (const auto& e : events.Events()) EXPECT_NE(e.module(), "bystander") << e.DebugString();
}

// relib's scenario (free of 0x1) and its relatives: each is caught at the
// free, the call fails naming the module and the kind of mistake, and the
// module is back after the restart.
TEST_F(DeallocTest, DeallocValidation) {
  SKIP_UNDER_SANITIZER();
  relibd_.reset();
  StartDaemon({"--max-restarts", "100", "--restart-backoff-ms", "20"});
  ASSERT_TRUE(Load("bystander", k_versioned_v2, nullptr, {}, "other").ok());
  ASSERT_TRUE(Load("m", k_dealloc).ok());
  pid_t bystander = WorkerOf("bystander");
  struct Case {
    const char* export_name;
    const char* what;
  };
  for (const Case& c : {Case{"free_bogus", "not a heap block"}, Case{"free_interior", "not a heap block"},
                        Case{"double_free", "already freed"}, Case{"realloc_input", "owned by the host"},
                        Case{"delete_input", "owned by the host"}}) {
    pid_t before = WorkerOf("m");
    grpc::Status status;
    std::string out = Call("m", c.export_name, kInput, &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << c.export_name << ": " << out;
    EXPECT_THAT(status.error_message(),
                AllOf(HasSubstr("SIGABRT"), HasSubstr("in code of module 'm'"), HasSubstr("invalid free"),
                      HasSubstr(c.what), HasSubstr(std::string("export '") + c.export_name + "'")));
    v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
    EXPECT_NE(m.worker_pid(), before) << c.export_name;
    EXPECT_EQ(Call("m", "ping"), "pong") << c.export_name;
  }
  EXPECT_EQ(WorkerOf("bystander"), bystander);
  EXPECT_EQ(Call("bystander", "version"), "v2");
  EXPECT_THAT(relibd_->Log(), HasSubstr("invalid free"));
}

// Frees the module is entitled to (its own blocks, aligned ones, blocks libc
// and libstdc++ allocate and free on its behalf, frees on its threads) are
// never reported, and nothing is left behind.
TEST_F(DeallocTest, LegitimateFreesAreNeverBlamed) {
  SKIP_UNDER_SANITIZER();
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded).ok());
  for (int i = 0; i < 20; ++i) {
    EXPECT_THAT(Call("m", "churn", kInput), HasSubstr("ok ")) << i;
  }
  EXPECT_EQ(WorkerOf("m"), loaded.module().worker_pid());
  v1::UnloadResponse response;
  grpc::Status status = Unload("m", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(response.report().unmapped());
  EXPECT_THAT(relibd_->Log(), Not(HasSubstr("invalid free")));
}

// The other policy: the free is refused (the block stays allocated), logged
// with the module's name, and the call and the worker carry on.
TEST_F(DeallocTest, LeakPolicyRefusesTheFreeAndKeepsTheWorker) {
  SKIP_UNDER_SANITIZER();
  relibd_.reset();
  StartDaemon({"--invalid-free", "leak"});
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded).ok());
  EXPECT_EQ(Call("m", "free_input", kInput), "freed the input");
  EXPECT_EQ(Call("m", "free_bogus"), "freed 0x1");
  EXPECT_EQ(Call("m", "double_free"), "freed twice");
  EXPECT_EQ(Call("m", "realloc_input", kInput), "realloc refused");
  // The host buffers were not freed behind the host's back: no later crash.
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Call("m", "churn", kInput).substr(0, 3), "ok ");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(WorkerOf("m"), loaded.module().worker_pid());
  EXPECT_THAT(relibd_->Log(), AllOf(HasSubstr("invalid free"), HasSubstr("module 'm'"), HasSubstr("refused")));
}

// A module freeing a pointer into static data whose preceding word looks like
// a chunk size of 1 MiB: the tracker must not read the would-be trailer 1 MiB
// away (a PROT_NONE page there). Under leak the free is refused and the worker
// lives on; before the fix the worker died of SIGSEGV.
TEST_F(DeallocTest, FarTrailerOfAPlausibleHeaderIsNotReadUnderLeak) {
  SKIP_UNDER_SANITIZER();
  relibd_.reset();
  StartDaemon({"--invalid-free", "leak"});
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded).ok());
  for (int i = 0; i < 3; ++i) {
    grpc::Status status;
    std::string out = Call("m", "free_far_header", "", &status);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_THAT(out, HasSubstr("freed static data with header 0x")) << i;
    EXPECT_EQ(Call("m", "ping"), "pong");
  }
  EXPECT_EQ(WorkerOf("m"), loaded.module().worker_pid());
  EXPECT_THAT(relibd_->Log(), AllOf(HasSubstr("invalid free"), HasSubstr("module 'm'"), HasSubstr("not a heap block"),
                                    HasSubstr("refused")));
}

// The same free under the default policy: the worker dies of relib's abort,
// blamed on the module as an invalid free (before the fix: SIGSEGV).
TEST_F(DeallocTest, FarTrailerOfAPlausibleHeaderAbortsAsAnInvalidFree) {
  SKIP_UNDER_SANITIZER();
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded).ok());
  grpc::Status status;
  std::string out = Call("m", "free_far_header", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << out;
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("SIGABRT"), HasSubstr("in code of module 'm'"), HasSubstr("invalid free"),
                    HasSubstr("not a heap block"), HasSubstr("export 'free_far_header'")));
  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
  EXPECT_NE(m.worker_pid(), loaded.module().worker_pid());
  EXPECT_EQ(Call("m", "ping"), "pong");
}

// Headers no glibc chunk has (0x1008: size not a multiple of 16; 0x1006:
// mmapped and of a non-main arena) before a pointer 0x20 bytes short of a
// PROT_NONE page: the would-be trailer (~4 KiB on) must not be read. Under
// leak the free is refused and the worker lives on; under abort the worker
// dies of relib's SIGABRT naming the invalid free. Before the fix (heap-5's
// inline path checked only the size range) both policies died of SIGSEGV
// with a note wrongly saying the memory around the pointer is not mapped.
TEST_F(DeallocTest, ImplausibleHeaderBeforeAProtNonePageIsRefusedUnderLeak) {
  SKIP_UNDER_SANITIZER();
  relibd_.reset();
  StartDaemon({"--invalid-free", "leak"});
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded).ok());
  for (const char* header : {"0x1008", "0x1006"}) {
    grpc::Status status;
    std::string out = Call("m", "free_bad_flags_header", header, &status);
    ASSERT_TRUE(status.ok()) << header << ": " << status.error_message();
    EXPECT_EQ(out, std::string("freed a pointer with header ") + header);
    EXPECT_EQ(Call("m", "ping"), "pong");
  }
  EXPECT_EQ(WorkerOf("m"), loaded.module().worker_pid());
  EXPECT_THAT(relibd_->Log(), AllOf(HasSubstr("invalid free"), HasSubstr("module 'm'"), HasSubstr("not a heap block"),
                                    HasSubstr("refused")));
}

TEST_F(DeallocTest, ImplausibleHeaderBeforeAProtNonePageAbortsAsAnInvalidFree) {
  SKIP_UNDER_SANITIZER();
  relibd_.reset();
  StartDaemon({"--max-restarts", "100", "--restart-backoff-ms", "20"});
  ASSERT_TRUE(Load("m", k_dealloc).ok());
  for (const char* header : {"0x1008", "0x1006"}) {
    pid_t before = WorkerOf("m");
    grpc::Status status;
    std::string out = Call("m", "free_bad_flags_header", header, &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << header << ": " << out;
    EXPECT_THAT(status.error_message(),
                AllOf(HasSubstr("SIGABRT"), HasSubstr("in code of module 'm'"), HasSubstr("invalid free"),
                      HasSubstr("not a heap block (never allocated"), HasSubstr("export 'free_bad_flags_header'")))
        << header;
    v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
    EXPECT_NE(m.worker_pid(), before) << header;
    EXPECT_EQ(Call("m", "ping"), "pong") << header;
  }
}

// A free whose chunk header is not mapped faults inside free's validation:
// the worker dies of SIGSEGV blamed on the module, and the crash names the
// cause (the inline path finds it from the faulting address, not from a note
// set before the load).
TEST_F(DeallocTest, FreeOfAPointerAfterAnUnmappedPageNamesTheCause) {
  SKIP_UNDER_SANITIZER();
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", k_dealloc, &loaded).ok());
  grpc::Status status;
  std::string out = Call("m", "free_unmapped_header", "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << out;
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("SIGSEGV"), HasSubstr("in code of module 'm'"), HasSubstr("invalid free"),
                    HasSubstr("not a heap block (the memory around the pointer is not mapped)"),
                    HasSubstr("export 'free_unmapped_header'")));
  v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
  EXPECT_NE(m.worker_pid(), loaded.module().worker_pid());
  EXPECT_EQ(Call("m", "ping"), "pong");
}

}  // namespace
}  // namespace relib::testing
