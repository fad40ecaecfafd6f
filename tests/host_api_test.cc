// Every host-API entry (log, save/load state, store/take fd) takes any size
// and any bytes a module passes and either does its job or returns an error
// to the module: relibd and the worker never die of it, a save is reported
// successful only once relibd holds it, and a full state store says so.
//
// This is relibd's counterpart of relib's scenario `panic_in_interface_host`
// (relib's testing/host/src/panic_in_interface_host.rs, with
// testing/module/src/panic_in_interface.rs and
// testing/runner/src/panic_in_interface_host.rs). It is NOT a literal port:
// relib lets a host install its own functions for modules to call and aborts
// the process when one of them panics; relibd has no module-supplied host
// functions, and its host code must never take anything down. The closest
// honest scenario is the reverse guarantee tested here: host-API calls with
// hostile input return an error to the module, and nothing crashes.
#include <signal.h>
#include <unistd.h>

#include <sstream>
#include <functional>
#include <string>
#include <string_view>

#include "tests/event_log.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kMiB = 1u << 20;

class HostApiTest : public RelibdTest {
 protected:
  void SetUp() override {}  // each test starts relibd with its own flags

  // Starts relibd, loads host_api as "m" (and a bystander in the same worker).
  void StartWith(std::vector<std::string> args) {
    args.insert(args.end(), {"--restart-backoff-ms", "50"});
    ASSERT_NO_FATAL_FAILURE(StartDaemon(args));
    v1::LoadResponse loaded;
    ASSERT_TRUE(Load("m", k_host_api, &loaded).ok());
    worker_ = loaded.module().worker_pid();
    ASSERT_TRUE(Load("bystander", kHelloPath).ok());
  }

  std::string Save(const std::string& key, uint64_t size, char fill = 'v') {
    return Call("m", "save", key + "\n" + std::to_string(size) + " " + fill);
  }

  // relibd and the worker are both still the same processes, and answer.
  void ExpectAllAlive() {
    EXPECT_FALSE(relibd_->process().TryReap().value().has_value()) << "relibd must stay up";
    v1::StatusResponse now = Status();
    const v1::ModuleInfo* m = FindModule(now, "m");
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->state(), v1::MODULE_STATE_LOADED) << m->last_error();
    EXPECT_EQ(m->worker_pid(), worker_) << "the worker must not have been replaced";
    EXPECT_EQ(Call("m", "ping"), "pong");
    EXPECT_EQ(Call("bystander", "greet", "you"), "Hello, you!");
  }

  // Crashes the worker with SIGSEGV in module code and waits for the restore.
  void CrashAndWaitForRestore() {
    EventLog events(relibd_->stub());
    grpc::Status status;
    Call("m", "crash", "", &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    WaitForRestart(events);
  }
  void WaitForRestart(EventLog& events) {
    int restarted = -1;
    for (int i = 0; i < 1000 && restarted < 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      restarted = events.Find([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_RESTARTED && e.module() == "m"; });
    }
    ASSERT_GE(restarted, 0) << "module m was not restored";
    v1::ModuleInfo m = WaitForState("m", v1::MODULE_STATE_LOADED);
    ASSERT_EQ(m.state(), v1::MODULE_STATE_LOADED) << m.last_error();
    EXPECT_NE(m.worker_pid(), worker_);
    worker_ = m.worker_pid();
  }

  static std::string HashOf(const std::string& answer) { return answer.substr(answer.find("hash=") + 5); }

  pid_t worker_ = 0;
};

TEST_F(HostApiTest, SaveOf64MiBIsAnErrorToTheModuleAndNothingDies) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));  // default store: 64 MiB
  std::string answer = Save("huge", 64 * kMiB);
  EXPECT_THAT(answer, StartsWith("rc=4 "));
  EXPECT_THAT(answer, AllOf(HasSubstr("state store"), HasSubstr("module 'm'"), HasSubstr("key 'huge'"),
                            HasSubstr("67108864 bytes"), HasSubstr("--state-store-mb")));
  ExpectAllAlive();
  EXPECT_THAT(Call("m", "load", "huge"), StartsWith("rc=3 size=0"));
  // Larger than the link could ever carry (its frames are 256 MiB by
  // default): refused by the worker itself, nothing is sent.
  answer = Save("huger", 300 * kMiB);
  EXPECT_THAT(answer, AllOf(StartsWith("rc=4 "), HasSubstr("key 'huger'")));
  ExpectAllAlive();
  // The store still works.
  answer = Save("small", 1000);
  ASSERT_THAT(answer, StartsWith("rc=0 "));
  EXPECT_EQ(HashOf(Call("m", "load", "small")), HashOf(answer));
}

TEST_F(HostApiTest, FullStoreSaysSoAndRefusedValuesNeverComeBack) {
  ASSERT_NO_FATAL_FAILURE(StartWith({"--state-store-mb", "64"}));
  std::string kept = Save("a", 40'000'000, 'a');
  ASSERT_THAT(kept, StartsWith("rc=0 "));
  std::string refused = Save("b", 40'000'000, 'b');
  EXPECT_THAT(refused, StartsWith("rc=4 "));
  EXPECT_THAT(refused, AllOf(HasSubstr("state store full"), HasSubstr("module 'm'"), HasSubstr("key 'b'"),
                             HasSubstr("40000000 bytes"), HasSubstr("capacity 67108864 bytes"),
                             HasSubstr("--state-store-mb")));
  // A refused save leaves nothing behind, in the worker or in relibd.
  EXPECT_THAT(Call("m", "load", "b"), StartsWith("rc=3 size=0"));
  // Overwriting "a" with a value that does not fit keeps the old value.
  EXPECT_THAT(Save("a", 70'000'000, 'x'), StartsWith("rc=4 "));
  ExpectAllAlive();
  ASSERT_NO_FATAL_FAILURE(CrashAndWaitForRestore());
  EXPECT_EQ(HashOf(Call("m", "load", "a")), HashOf(kept));
  EXPECT_THAT(Call("m", "load", "b"), StartsWith("rc=3 size=0"));
}

TEST_F(HostApiTest, SaveLargerThanASmallStoreIsRefusedWithItsCapacity) {
  ASSERT_NO_FATAL_FAILURE(StartWith({"--state-store-mb", "16"}));
  std::string answer = Save("big", 40'000'000);
  EXPECT_THAT(answer, StartsWith("rc=4 "));
  EXPECT_THAT(answer, AllOf(HasSubstr("state store"), HasSubstr("key 'big'"), HasSubstr("40000000 bytes"),
                            HasSubstr("16777216 bytes"), HasSubstr("--state-store-mb")));
  ExpectAllAlive();
  ASSERT_NO_FATAL_FAILURE(CrashAndWaitForRestore());
  EXPECT_THAT(Call("m", "load", "big"), StartsWith("rc=3 size=0"));
}

TEST_F(HostApiTest, AnAcknowledgedSaveSurvivesTheWorkerDyingRightAfter) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  for (uint64_t size : {uint64_t{10}, uint64_t{8 * kMiB}}) {
    SCOPED_TRACE(size);
    std::string expected = Call("m", "save", "probe\n" + std::to_string(size) + " p");  // only to learn the hash
    ASSERT_THAT(expected, StartsWith("rc=0 "));
    ASSERT_THAT(Call("m", "save", "probe\n1 q"), StartsWith("rc=0 "));
    EventLog events(relibd_->stub());
    grpc::Status status;
    Call("m", "save_then_die", "probe\n" + std::to_string(size) + " p", &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    ASSERT_NO_FATAL_FAILURE(WaitForRestart(events));
    EXPECT_EQ(HashOf(Call("m", "load", "probe")), HashOf(expected));
  }
}

TEST_F(HostApiTest, SaveFromAModuleThreadWhileTheWorkerIsIdle) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  ASSERT_EQ(Call("m", "save_in_background", "1000"), "started");
  std::string rc;
  for (int i = 0; i < 200; ++i) {
    rc = Call("m", "background_result");
    if (rc != "-100") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(rc, "0");
  EXPECT_THAT(Call("m", "load", "background"), StartsWith("rc=0 size=1000"));
  ASSERT_EQ(Call("m", "save_in_background", std::to_string(64 * kMiB)), "started");
  for (int i = 0; i < 200; ++i) {
    rc = Call("m", "background_result");
    if (rc != "-100") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(rc, "4");
  ExpectAllAlive();
}

TEST_F(HostApiTest, KeysOfAnyLengthAndAnyBytes) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  EXPECT_EQ(Call("m", "long_key", std::to_string(kMiB)),
            "save rc=0; load rc=0 size=1 hash=" + std::to_string(std::hash<std::string_view>{}("v")));
  // Bytes that are not UTF-8, and an empty key.
  std::string binary_key = "\xff\xfe\x01 key";
  std::string saved = Save(binary_key, 100);
  ASSERT_THAT(saved, StartsWith("rc=0 "));
  EXPECT_EQ(HashOf(Call("m", "load", binary_key)), HashOf(saved));
  std::string empty = Save("", 5);
  ASSERT_THAT(empty, StartsWith("rc=0 "));
  // A NUL inside a key given to the C++ SDK: refused, never truncated into
  // another key.
  EXPECT_EQ(Call("m", "sdk_nul_key"), "save=false other=<none> plain=<none> store=false take=-1");
  // Null pointers with lengths.
  std::string nulls = Call("m", "null_pointers");
  EXPECT_THAT(nulls, AllOf(HasSubstr("save_null_data rc=1"), HasSubstr("save_null_key rc=1"),
                           HasSubstr("save_empty rc=0"), HasSubstr("load_null_key rc=1"),
                           HasSubstr("load_null_out rc=1"), HasSubstr("store_null_key rc=1"),
                           HasSubstr("take_null_key -1"), HasSubstr("log_null survived")));
  ExpectAllAlive();
  ASSERT_NO_FATAL_FAILURE(CrashAndWaitForRestore());
  EXPECT_EQ(HashOf(Call("m", "load", binary_key)), HashOf(saved));
  EXPECT_THAT(Call("m", "load", std::string(kMiB, 'k')), StartsWith("rc=0 size=1"));
  EXPECT_THAT(Call("m", "load", ""), StartsWith("rc=0 size=5"));
}

TEST_F(HostApiTest, LogTakesAnyBytesAndCannotForgeLines) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  const char kForged[] = "first\n2030-01-01T00:00:00.000 critical relibd[1] FORGED line\r\0tail\x1b[31m\xff";
  std::string forged(kForged, sizeof(kForged) - 1);
  EXPECT_EQ(Call("m", "log", forged), "logged " + std::to_string(forged.size()));
  std::string huge(kMiB, 'L');
  huge[1000] = '\n';
  huge.replace(1001, 8, "HUGELINE");
  EXPECT_EQ(Call("m", "log", huge), "logged " + std::to_string(kMiB));
  ExpectAllAlive();
  std::string log = relibd_->Log();
  std::istringstream lines(log);
  int forged_lines = 0, escaped_lines = 0, huge_lines = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("FORGED") != std::string::npos) {
      if (line.find("module=m ") != std::string::npos && line.find("first\\n2030") != std::string::npos &&
          line.find("\\r\\x00tail\\x1b[31m\\xff") != std::string::npos) {
        ++escaped_lines;
      } else {
        ++forged_lines;
      }
    }
    if (line.find("HUGELINE") != std::string::npos) ++huge_lines;
    if (line.rfind("HUGELINE", 0) == 0) ++forged_lines;
  }
  EXPECT_EQ(forged_lines, 0) << log.substr(0, 4000);
  EXPECT_EQ(escaped_lines, 1);
  EXPECT_EQ(huge_lines, 1);
}

TEST_F(HostApiTest, FdStoreRefusesBadFdsAndUnknownKeys) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  EXPECT_THAT(Call("m", "store_fd", "-1"), StartsWith("rc=1 "));
  EXPECT_THAT(Call("m", "store_fd", "closed"), StartsWith("rc=1 "));
  EXPECT_THAT(Call("m", "store_fd", "999999"), StartsWith("rc=1 "));
  EXPECT_EQ(Call("m", "take_fd", "fd"), "-1");
  EXPECT_EQ(Call("m", "take_fd", "never stored"), "-1");
  EXPECT_EQ(Call("m", "store_fd", "pipe"), "rc=0");
  EXPECT_EQ(Call("m", "take_fd", "fd"), "ok");
  EXPECT_EQ(Call("m", "long_fd_key", std::to_string(kMiB)), "store rc=0; take ok");
  ExpectAllAlive();
  ASSERT_NO_FATAL_FAILURE(CrashAndWaitForRestore());
  EXPECT_EQ(Call("m", "take_fd", "fd"), "ok");
  EXPECT_EQ(Call("m", "take_fd", "never stored"), "-1");
}

// Every fd a module stores is one of relibd's own fds and, at each load, one
// message on the worker's fd channel: a module cannot use them all up.
TEST_F(HostApiTest, FdStoreHasAPerModuleLimit) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  EXPECT_THAT(Call("m", "store_many", "200"),
              AllOf(StartsWith("stored 64; then rc="), HasSubstr("fd store full"), HasSubstr("64 fds")));
  ExpectAllAlive();
  // The stored ones still reach a restarted worker.
  ASSERT_NO_FATAL_FAILURE(CrashAndWaitForRestore());
  EXPECT_EQ(Call("m", "take_fd", "many-63"), "ok");
  EXPECT_EQ(Call("m", "take_fd", "many-64"), "-1");
}

// A reload whose stored fds the worker cannot all take (its fd table is
// full) fails, and leaves no fd of that command on the worker's fd channel:
// a later reload's fds reach their own keys (before, the ones after the
// first failure stayed queued and went to the next command's first keys).
TEST_F(HostApiTest, StoredFdsTheWorkerCouldNotTakeDoNotShiftTheNextReloadsFds) {
  ASSERT_NO_FATAL_FAILURE(StartWith({}));
  ASSERT_EQ(Call("m", "store_path", "a /dev/null"), "rc=0");
  ASSERT_EQ(Call("m", "store_path", "b /dev/zero"), "rc=0");
  ASSERT_EQ(Call("m", "store_path", "c /dev/urandom"), "rc=0");
  ASSERT_NE(Call("m", "one_more_fd"), "failed");
  v1::ReloadResponse response;
  grpc::Status refused = Reload("m", k_host_api, &response);
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.error_message(), HasSubstr("RLIMIT_NOFILE")) << refused.error_message();
  EXPECT_EQ(Call("m", "one_more_fd", "off"), "restored");
  ExpectAllAlive();
  grpc::Status reloaded = Reload("m", k_host_api, &response);
  ASSERT_TRUE(reloaded.ok()) << reloaded.error_message();
  EXPECT_EQ(Call("m", "take_path", "a"), "/dev/null");
  EXPECT_EQ(Call("m", "take_path", "b"), "/dev/zero");
  EXPECT_EQ(Call("m", "take_path", "c"), "/dev/urandom");
}

}  // namespace
}  // namespace relib::testing
