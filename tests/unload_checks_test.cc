// The unload checks end to end: real relibd, real worker, one test module per
// leftover kind, effects verified in /proc/<worker>.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <sstream>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

class UnloadChecksTest : public RelibdTest {
 protected:
  // Starts the worker with one load/unload, so its first-use allocations
  // are behind any later RSS measurement; returns its pid.
  pid_t WarmWorker() {
    pid_t worker = LoadOrDie("warmup", kHelloPath);
    EXPECT_TRUE(Unload("warmup").ok());
    return worker;
  }
  static size_t TaskCount(pid_t pid) {
    size_t count = 0;
    for (auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
      (void)entry;
      ++count;
    }
    return count;
  }
  static std::string FdTarget(pid_t pid, int fd) {
    std::error_code error;
    auto target = std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd), error);
    return error ? "" : target.string();
  }
};

TEST_F(UnloadChecksTest, C11ThreadRefusesUnloadLikeAnyOther) {
  v1::ModuleOptions options;
  options.set_thread_grace_ms(200);
  pid_t worker = LoadOrDie("t", k_threads, options);
  ASSERT_EQ(Call("t", "spawn_c11_forever"), "started");
  v1::UnloadResponse response;
  grpc::Status status = Unload("t", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("1 running thread"), HasSubstr("'c11-forever'")));
  EXPECT_FALSE(ModuleMappings(worker, "/t.v1.").empty());  // its code stays mapped under the thread
  EXPECT_EQ(Call("t", "ping"), "pong");
}

TEST_F(UnloadChecksTest, ThreadThatNeverStopsRefusesUnloadAndOldVersionKeepsServing) {
  v1::ModuleOptions options;
  options.set_thread_grace_ms(300);
  pid_t worker = LoadOrDie("t", k_threads, options);
  ASSERT_EQ(Call("t", "spawn_forever"), "started");
  v1::UnloadResponse response;
  grpc::Status status = Unload("t", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("1 running thread"), HasSubstr("'forever'"),
                                            HasSubstr("keeps running")));
  const v1::UnloadReport& report = response.report();
  EXPECT_TRUE(report.refused());
  ASSERT_EQ(report.live_threads_size(), 1);
  EXPECT_EQ(report.live_threads(0).name(), "forever");
  pid_t tid = report.live_threads(0).tid();
  EXPECT_TRUE(std::filesystem::exists("/proc/" + std::to_string(worker) + "/task/" + std::to_string(tid)));
  EXPECT_FALSE(ModuleMappings(worker, "/t.v1.").empty());  // never dlclosed

  EXPECT_EQ(Call("t", "ping"), "pong");
  grpc::Status reload = Reload("t", "");
  EXPECT_EQ(reload.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Call("t", "ping"), "pong");
  v1::StatusResponse now = Status();
  ASSERT_NE(FindModule(now, "t"), nullptr);
  EXPECT_EQ(FindModule(now, "t")->version(), 1u);
  EXPECT_EQ(FindModule(now, "t")->state(), v1::MODULE_STATE_LOADED);
  EXPECT_EQ(FindModule(now, "t")->worker_pid(), worker);
}

// Issue 14 item 5: a std::thread's start routine is libstdc++'s trampoline
// (and Debian's libstdc++ is stripped, so it has no name); the report names
// the callable the module passed instead: the named function, or the
// function a lambda was written in. Mirrors relib's
// testing/module/src/threads_check.rs (a module thread refuses the unload).
TEST_F(UnloadChecksTest, StdThreadsAreReportedByTheCallableTheModulePassed) {
  v1::ModuleOptions options;
  options.set_thread_grace_ms(100);
  LoadOrDie("t", k_threads, options);
  ASSERT_EQ(Call("t", "spawn_std_named"), "started");
  ASSERT_EQ(Call("t", "spawn_std_lambda"), "started");
  WaitForStats("t", [](const v1::ModuleStats& s) { return s.threads() >= 2; });
  v1::UnloadResponse response;
  grpc::Status status = Unload("t", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  const v1::UnloadReport& report = response.report();
  ASSERT_EQ(report.live_threads_size(), 2) << report.DebugString();
  std::map<std::string, std::string> routines;
  for (const auto& thread : report.live_threads()) routines[thread.name()] = thread.start_routine();
  EXPECT_THAT(routines["std-named"], AllOf(HasSubstr("StdThreadBody"), Not(HasSubstr("libstdc++"))));
  EXPECT_THAT(routines["std-lambda"], AllOf(HasSubstr("SpawnStdLambda"), HasSubstr("lambda"),
                                            Not(HasSubstr("libstdc++"))));
  EXPECT_EQ(Call("t", "ping"), "pong");
}

// A thread argument is only read as libstdc++'s state object when the start
// routine is libstdc++'s: any other may be no pointer at all (before the fix
// the worker read the first word of every module thread's argument and died
// of SIGSEGV here). A hidden start routine is named from the module's .symtab.
TEST_F(UnloadChecksTest, ThreadArgumentThatIsNoPointerIsNeverRead) {
  v1::ModuleOptions options;
  options.set_thread_grace_ms(100);
  LoadOrDie("t", k_threads, options);
  ASSERT_EQ(Call("t", "spawn_integer_arg"), "started");
  v1::UnloadResponse response;
  grpc::Status status = Unload("t", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_EQ(response.report().live_threads_size(), 1) << response.report().DebugString();
  EXPECT_THAT(response.report().live_threads(0).start_routine(), HasSubstr("IntegerArgLoop"));
  EXPECT_EQ(Call("t", "ping"), "pong");
}

TEST_F(UnloadChecksTest, ThreadsThatStopWithinGraceAreWaitedFor) {
  SKIP_UNDER_SANITIZER();
  pid_t worker = LoadOrDie("t", k_threads);
  size_t tasks_before = TaskCount(worker);
  // pthread_exit after a delay, a std::thread starting another, std::async.
  for (const char* spawn : {"spawn_stopping", "spawn_nested", "spawn_async"}) ASSERT_EQ(Call("t", spawn), "started");
  v1::ModuleStats stats = WaitForStats("t", [](const v1::ModuleStats& s) { return s.threads() >= 4; });
  EXPECT_GE(stats.threads(), 4);
  v1::UnloadResponse response;
  grpc::Status status = Unload("t", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.report().live_threads(), IsEmpty());
  EXPECT_TRUE(response.report().unmapped());
  EXPECT_EQ(TaskCount(worker), tasks_before);
}

TEST_F(UnloadChecksTest, ThreadLocalDestructorAfterStartRoutineStillCounts) {
  pid_t worker = LoadOrDie("t", k_threads);
  ASSERT_EQ(Call("t", "spawn_slow_tls"), "started");
  // The thread's routine returns at once; its thread_local destructor runs
  // 300 ms more in module code. Unloading now must wait for it.
  v1::UnloadResponse response;
  grpc::Status status = Unload("t", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(response.report().unmapped());
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_TRUE(std::filesystem::exists("/proc/" + std::to_string(worker))) << "worker crashed";
  ASSERT_TRUE(Load("again", kHelloPath).ok());
  EXPECT_EQ(FindModule(Status(), "again") != nullptr, true);
}

TEST_F(UnloadChecksTest, LeaksAreReportedWithSitesAndShownLive) {
  SKIP_UNDER_SANITIZER();
  v1::ModuleOptions options;
  options.set_capture_sites(true);
  LoadOrDie("m", k_leaks, options);
  ASSERT_EQ(Call("m", "leak_malloc", "1000"), "leaked");
  ASSERT_EQ(Call("m", "leak_new_array", "2000"), "leaked");
  ASSERT_EQ(Call("m", "leak_in_thread"), "leaked");
  ASSERT_EQ(Call("m", "alloc_and_free", "5000"), "10000");
  v1::ModuleStats stats = WaitForStats("m", [](const v1::ModuleStats& s) { return s.heap_bytes() >= 4000; });
  EXPECT_GE(stats.heap_bytes(), 1000 + 2000 + 10 * 101);
  EXPECT_LT(stats.heap_bytes(), 20000);  // alloc_and_free released its 10000 bytes
  EXPECT_GE(stats.heap_blocks(), 13);

  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("m", &response).ok());
  const v1::HeapReport& heap = response.report().heap();
  EXPECT_TRUE(heap.tracking_enabled());
  EXPECT_GE(heap.leaked_bytes(), 1000 + 2000 + 10 * 101);
  EXPECT_GE(heap.leaked_blocks(), 13);
  EXPECT_FALSE(heap.freed());
  ASSERT_GT(heap.top_sites_size(), 0);
  bool module_site = false;
  for (const auto& site : heap.top_sites()) module_site = module_site || site.location().find("m.v1.") != std::string::npos;
  EXPECT_TRUE(module_site) << response.report().DebugString();
  EXPECT_TRUE(response.report().unmapped());
}

TEST_F(UnloadChecksTest, FreePolicyReturnsTwoHundredMegabytes) {
  SKIP_UNDER_SANITIZER();
  pid_t worker = WarmWorker();
  auto rss_before = common::ReadRssBytes(worker);
  ASSERT_THAT(rss_before, IsOk());

  v1::ModuleOptions options;
  options.set_leak_policy(v1::LEAK_POLICY_FREE);
  LoadOrDie("big", k_leaks, options);
  ASSERT_EQ(Call("big", "leak_megabytes", "200"), "leaked");
  v1::ModuleStats stats = WaitForStats("big", [](const v1::ModuleStats& s) { return s.heap_bytes() >= (200 << 20); });
  EXPECT_GE(stats.heap_bytes(), 200 << 20);
  auto rss_leaking = common::ReadRssBytes(worker);
  EXPECT_GT(*rss_leaking, *rss_before + (190 << 20));

  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("big", &response).ok());
  EXPECT_GE(response.report().heap().leaked_bytes(), 200 << 20);
  EXPECT_TRUE(response.report().heap().freed());
  auto rss_after = common::ReadRssBytes(worker);
  EXPECT_LT(*rss_after, *rss_before + (4 << 20)) << "before " << *rss_before << " after " << *rss_after;
}

// 100 MiB in 1.6 million blocks of 64 bytes, half of them in a second malloc
// arena (a module thread's), leaked over 100 calls so the worker's own
// allocations interleave with them: freed, such blocks stay in malloc's
// heaps, resident, unless the free policy also hands the pages back.
TEST_F(UnloadChecksTest, FreePolicyReturnsAHundredMegabytesOfSmallBlocks) {
  SKIP_UNDER_SANITIZER();
  pid_t worker = WarmWorker();
  auto rss_before = common::ReadRssBytes(worker);
  ASSERT_THAT(rss_before, IsOk());

  v1::ModuleOptions options;
  options.set_leak_policy(v1::LEAK_POLICY_FREE);
  LoadOrDie("small", k_leaks, options);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(Call("small", "leak_small_blocks", "1"), "leaked");
  auto rss_leaking = common::ReadRssBytes(worker);
  EXPECT_GT(*rss_leaking, *rss_before + (100 << 20));

  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("small", &response).ok());
  EXPECT_GE(response.report().heap().leaked_blocks(), 100 << 14);
  EXPECT_TRUE(response.report().heap().freed());
  auto rss_after = common::ReadRssBytes(worker);
  EXPECT_LT(*rss_after, *rss_before + (8 << 20)) << "before " << *rss_before << " after " << *rss_after;
}

TEST_F(UnloadChecksTest, ThreadLocalStringOnCallerAndModuleThreadStillUnmaps) {
  SKIP_UNDER_SANITIZER();
  LoadOrDie("tls", k_tls);
  ASSERT_EQ(Call("tls", "use_here", "abc"), "67");
  ASSERT_EQ(Call("tls", "use_in_thread", "abcd"), "68");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("tls", &response).ok());
  const v1::UnloadReport& report = response.report();
  EXPECT_TRUE(report.unmapped()) << report.DebugString();
  EXPECT_EQ(report.tls().destructors_run(), 1);  // the caller's; the module thread ran its own at exit
  EXPECT_EQ(report.tls().destructors_discarded(), 0);
  EXPECT_EQ(report.heap().leaked_bytes(), 0) << "the destructors freed both strings";
}

TEST_F(UnloadChecksTest, FiveHundredThreadLocalReloadsKeepWorkerFlat) {
  SKIP_UNDER_SANITIZER();
  pid_t worker = LoadOrDie("tls", k_tls);
  auto cycle = [&](int count) {
    for (int i = 0; i < count; ++i) {
      ASSERT_EQ(Call("tls", "use_here", "x"), "65");
      v1::ReloadResponse response;
      ASSERT_TRUE(Reload("tls", "", &response).ok());
      ASSERT_TRUE(response.report().unmapped()) << "cycle " << i;
    }
  };
  cycle(50);
  auto maps_before = common::ReadMappings(worker);
  auto rss_before = common::ReadRssBytes(worker);
  cycle(500);
  auto maps_after = common::ReadMappings(worker);
  auto rss_after = common::ReadRssBytes(worker);
  ASSERT_THAT(maps_after, IsOk());
  EXPECT_LE(maps_after->size(), maps_before->size() + 2);
  EXPECT_LT(static_cast<int64_t>(*rss_after) - static_cast<int64_t>(*rss_before), 2 << 20)
      << *rss_before << " -> " << *rss_after;
}

TEST_F(UnloadChecksTest, LeftoverFdsAreReportedAndKeptByDefault) {
  pid_t worker = LoadOrDie("f", k_fds);
  int file_fd = std::stoi(Call("f", "open_file", kRelibdPath));
  std::istringstream listen(Call("f", "listen"));
  int socket_fd, port;
  listen >> socket_fd >> port;
  Call("f", "pipe");
  Call("f", "eventfd");
  int fopen_fd = std::stoi(Call("f", "fopen_file", kHelloPath));
  ASSERT_EQ(Call("f", "open_and_close", kRelibctlPath), "closed");
  v1::ModuleStats stats = WaitForStats("f", [](const v1::ModuleStats& s) { return s.open_fds() >= 6; });
  EXPECT_EQ(stats.open_fds(), 6);

  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("f", &response).ok());
  const v1::UnloadReport& report = response.report();
  EXPECT_FALSE(report.fds_closed());
  std::vector<std::string> seen;
  for (const auto& fd : report.open_fds()) seen.push_back(std::to_string(fd.fd()) + " " + fd.kind() + " " + fd.description());
  EXPECT_THAT(seen, Contains(std::to_string(file_fd) + " file " + kRelibdPath));
  EXPECT_THAT(seen, Contains(std::to_string(fopen_fd) + " file " + kHelloPath));
  EXPECT_THAT(seen, Contains(std::to_string(socket_fd) + " socket tcp 127.0.0.1:" + std::to_string(port) + " listening"));
  EXPECT_EQ(report.open_fds_size(), 6) << report.DebugString();
  EXPECT_EQ(FdTarget(worker, file_fd), kRelibdPath);  // report policy: still open
  EXPECT_TRUE(report.unmapped());
}

TEST_F(UnloadChecksTest, ClosePolicyClosesLeftoverFds) {
  v1::ModuleOptions options;
  options.set_fd_policy(v1::FD_POLICY_CLOSE);
  pid_t worker = LoadOrDie("f", k_fds, options);
  int file_fd = std::stoi(Call("f", "open_file", kRelibdPath));
  std::istringstream listen(Call("f", "listen"));
  int socket_fd, port;
  listen >> socket_fd >> port;
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("f", &response).ok());
  EXPECT_TRUE(response.report().fds_closed());
  EXPECT_EQ(response.report().open_fds_size(), 2);
  EXPECT_NE(FdTarget(worker, file_fd), kRelibdPath);
  EXPECT_EQ(FdTarget(worker, socket_fd).rfind("socket:", 0), std::string::npos);
  // The listening socket is really gone: connecting is refused.
  int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(::connect(client, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ::close(client);
}

// The fd sweep lists /proc/self/fd through a descriptor the agent keeps
// across checks: each unload must still see an fd opened behind the agent's
// back since the previous one.
TEST_F(UnloadChecksTest, FdOpenedByARawSystemCallIsFoundAtEachUnload) {
  pid_t worker = WarmWorker();
  for (int round = 0; round < 3; ++round) {
    ASSERT_EQ(LoadOrDie("f", k_fds), worker);
    int fd = std::stoi(Call("f", "raw_open", kRelibdPath));
    v1::UnloadResponse response;
    ASSERT_TRUE(Unload("f", &response).ok());
    std::vector<std::string> seen;
    for (const auto& open : response.report().open_fds()) seen.push_back(std::to_string(open.fd()) + " " + open.description());
    EXPECT_THAT(seen, Contains(std::to_string(fd) + " " + kRelibdPath)) << "round " << round;
    EXPECT_EQ(FdTarget(worker, fd), kRelibdPath);  // report policy: still open
  }
}

// A module that closes the agent's kept /proc/self/fd listing with a raw
// system call: the sweep opens it again, and an fd the module then opens on
// the freed number is still the module's (never hidden as the host's).
TEST_F(UnloadChecksTest, KeptFdListingClosedBehindTheAgentsBackIsReopened) {
  pid_t worker = WarmWorker();
  v1::ModuleOptions options;
  options.set_signal_policy(v1::SIGNAL_POLICY_REFUSE);
  ASSERT_EQ(LoadOrDie("f", k_fds, options), worker);
  ASSERT_GE(std::stoi(Call("f", "raw_close_proc_fds")), 1);
  int fd = std::stoi(Call("f", "raw_open", kRelibdPath));
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("f", &response).ok()) << response.report().DebugString();
  std::vector<std::string> seen;
  for (const auto& open : response.report().open_fds()) seen.push_back(std::to_string(open.fd()) + " " + open.description());
  EXPECT_THAT(seen, Contains(std::to_string(fd) + " " + kRelibdPath));
  EXPECT_TRUE(response.report().unmapped());
  // The next module's checks work as before.
  LoadOrDie("c", k_code_paths, options);
  ASSERT_EQ(Call("c", "raw_rt_sigaction"), "installed");
  grpc::Status status = Unload("c", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_TRUE(response.report().refused());
}

TEST_F(UnloadChecksTest, C11ThreadSpecificKeysAreDeletedToo) {
  LoadOrDie("k", k_keys_maps);
  Call("k", "create_c11_key");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("k", &response).ok());
  EXPECT_EQ(response.report().pthread_keys_deleted(), 1);
}

TEST_F(UnloadChecksTest, PthreadKeysDeletedAndMappingsUnmapped) {
  v1::ModuleOptions options;
  options.set_mapping_policy(v1::MAPPING_POLICY_UNMAP);
  pid_t worker = LoadOrDie("k", k_keys_maps, options);
  Call("k", "create_key");
  uint64_t address = std::stoull(Call("k", "map_anonymous", "1048576"), nullptr, 16);
  auto mapped = [&] {
    auto maps = common::ReadMappings(worker);
    for (const auto& m : *maps) {
      if (m.start <= address && address < m.end) return true;
    }
    return false;
  };
  EXPECT_TRUE(mapped());
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("k", &response).ok());
  const v1::UnloadReport& report = response.report();
  EXPECT_EQ(report.pthread_keys_deleted(), 1);
  ASSERT_EQ(report.mappings_size(), 1);
  EXPECT_EQ(report.mappings(0).address(), address);
  EXPECT_EQ(report.mappings(0).length(), 1048576u);
  EXPECT_TRUE(report.mappings_unmapped());
  EXPECT_FALSE(mapped());
}

TEST_F(UnloadChecksTest, MappingsKeptUnderReportPolicy) {
  pid_t worker = LoadOrDie("k", k_keys_maps);
  uint64_t address = std::stoull(Call("k", "map_anonymous", "65536"), nullptr, 16);
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("k", &response).ok());
  EXPECT_EQ(response.report().mappings_size(), 1);
  EXPECT_FALSE(response.report().mappings_unmapped());
  bool still = false;
  auto mappings = common::ReadMappings(worker);
  ASSERT_THAT(mappings, IsOk());
  for (const auto& m : *mappings) still = still || (m.start <= address && address < m.end);
  EXPECT_TRUE(still);
}

TEST_F(UnloadChecksTest, GnuUniqueSymbolsWarnAtLoadAndPinWithoutSdkFlags) {
  v1::LoadResponse raw;
  ASSERT_TRUE(Load("raw", k_unique_raw, &raw).ok());
  ASSERT_EQ(raw.module().warnings_size(), 1);
  EXPECT_THAT(raw.module().warnings(0), AllOf(HasSubstr("will never unmap"), HasSubstr("STB_GNU_UNIQUE"),
                                              HasSubstr("_ZN7CounterIiE5countE")));
  EXPECT_EQ(Call("raw", "bump"), "1");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("raw", &response).ok());
  EXPECT_FALSE(response.report().unmapped());
  EXPECT_THAT(response.report().pin_reasons(), Contains(HasSubstr("STB_GNU_UNIQUE")));

  v1::LoadResponse sdk;
  ASSERT_TRUE(Load("sdk", k_unique_sdk, &sdk).ok());
  EXPECT_EQ(sdk.module().warnings_size(), 0);
  EXPECT_EQ(Call("sdk", "bump"), "1");
  ASSERT_TRUE(Unload("sdk", &response).ok());
  EXPECT_TRUE(response.report().unmapped());
}

TEST_F(UnloadChecksTest, NodeleteAndSelfDlopenAreExplained) {
  v1::LoadResponse nodelete;
  ASSERT_TRUE(Load("nd", k_nodelete, &nodelete).ok());
  EXPECT_THAT(nodelete.module().warnings(), Contains(HasSubstr("nodelete")));
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("nd", &response).ok());
  EXPECT_FALSE(response.report().unmapped());
  EXPECT_THAT(response.report().pin_reasons(), Contains(HasSubstr("DF_1_NODELETE")));

  ASSERT_TRUE(Load("self", k_self_dlopen).ok());
  EXPECT_EQ(Call("self", "ping"), "pong");
  ASSERT_TRUE(Unload("self", &response).ok());
  EXPECT_FALSE(response.report().unmapped());
  EXPECT_THAT(response.report().pin_reasons(), Contains(HasSubstr("dlopen")));
  EXPECT_FALSE(response.report().remaining_mappings().empty());
}

// The unmap proof: a file lease when nothing has the copy open, the full
// maps scan otherwise, and both catch what the other could miss.
TEST_F(UnloadChecksTest, UnmappedIsProvenByAFileLeaseWhenNothingHoldsTheCopy) {
  LoadOrDie("km", k_keys_maps);
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("km", &response).ok());
  EXPECT_TRUE(response.report().unmapped()) << response.report().DebugString();
  EXPECT_EQ(response.report().unmapped_proof(), "file lease");

  LoadOrDie("km", k_keys_maps);
  v1::ReloadResponse reload;
  ASSERT_TRUE(Reload("km", k_keys_maps, &reload).ok());
  EXPECT_TRUE(reload.report().unmapped());
  EXPECT_EQ(reload.report().unmapped_proof(), "file lease");
}

TEST_F(UnloadChecksTest, RawMappingOfItsOwnFileIsStillFoundByTheMapsScan) {
  pid_t worker = LoadOrDie("km", k_keys_maps);
  ASSERT_EQ(Call("km", "map_own_file_raw"), "mapped");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("km", &response).ok());
  EXPECT_FALSE(response.report().unmapped());
  EXPECT_EQ(response.report().unmapped_proof(), "/proc/self/maps");
  EXPECT_THAT(response.report().pin_reasons(), Contains(HasSubstr("no module made through the agent")));
  EXPECT_EQ(response.report().remaining_mappings_size(), 1);
  EXPECT_EQ(ModuleMappings(worker, "/km.v1.").size(), 1u);  // what the report says is what /proc shows
}

// The worker proves once per file system that a mapping blocks the lease
// (ProbeSeesMappings) and trusts later copies on it without probing again:
// a version loaded after that proof must still be caught holding a mapping.
TEST_F(UnloadChecksTest, RawMappingOfALaterVersionIsStillFoundByTheMapsScan) {
  pid_t worker = LoadOrDie("km", k_keys_maps);
  v1::ReloadResponse reload;
  ASSERT_TRUE(Reload("km", k_keys_maps, &reload).ok());
  ASSERT_TRUE(Reload("km", k_keys_maps, &reload).ok());
  EXPECT_EQ(reload.report().unmapped_proof(), "file lease");
  ASSERT_EQ(Call("km", "map_own_file_raw"), "mapped");
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("km", &response).ok());
  EXPECT_FALSE(response.report().unmapped());
  EXPECT_EQ(response.report().unmapped_proof(), "/proc/self/maps");
  EXPECT_EQ(response.report().remaining_mappings_size(), 1);
  EXPECT_EQ(ModuleMappings(worker, "/km.v3.").size(), 1u);
}

TEST_F(UnloadChecksTest, FdOfItsOwnFileLeavesTheProofToTheMapsScan) {
  LoadOrDie("km", k_keys_maps);
  ASSERT_FALSE(Call("km", "open_own_file").empty());
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("km", &response).ok());
  // The kept fd (fd policy report) makes the lease impossible; the scan
  // finds no mapping.
  EXPECT_TRUE(response.report().unmapped()) << response.report().DebugString();
  EXPECT_EQ(response.report().unmapped_proof(), "/proc/self/maps");
  EXPECT_EQ(response.report().open_fds_size(), 1);
}

}  // namespace
}  // namespace relib::testing
