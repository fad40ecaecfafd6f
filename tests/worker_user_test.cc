// Workers of a root relibd run as an unprivileged user: the module sees the
// worker user's uid/gid, no supplementary groups and no_new_privs, and cannot
// open relibd's private files (the flight recorder reaches it as an fd).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "tests/relibd_fixture.h"
#include "tests/test_users.h"

namespace relib::testing {
namespace {

class WorkerUserTest : public RelibdTest {
 protected:
  void SetUp() override {
    if (!TestUsers::CanCreate()) GTEST_SKIP() << "workers drop privileges only when relibd runs as root";
    worker_group_ = users_.AddGroup("w");
    ASSERT_FALSE(worker_group_.empty());
    worker_user_ = users_.AddUser("w", {worker_group_});
    ASSERT_FALSE(worker_user_.empty());
  }
  TestUsers users_;
  std::string worker_group_, worker_user_;
};

TEST_F(WorkerUserTest, ModuleRunsAsTheWorkerUserWithoutGroupsOrNewPrivileges) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-user", worker_user_}));
  pid_t worker = LoadOrDie("identity", k_identity);
  auto user = TestUsers::Of(worker_user_);
  EXPECT_EQ(Call("identity", "ids"),
            "uid=" + std::to_string(user.uid) + " gid=" + std::to_string(user.gid) + " groups=0 nnp=1");
  // The kernel agrees.
  std::string status = ReadAll("/proc/" + std::to_string(worker) + "/status");
  EXPECT_THAT(status, ::testing::HasSubstr("Uid:\t" + std::to_string(user.uid) + "\t" + std::to_string(user.uid)));
  EXPECT_THAT(status, ::testing::HasSubstr("NoNewPrivs:\t1"));
  // relibd's private files stay closed to the module, and still work: the
  // recorder reached the worker as an fd (a hang is still attributed).
  pid_t relibd = relibd_->process().pid();
  EXPECT_EQ(Call("identity", "open", "/dev/shm/relibd." + std::to_string(relibd) + ".state"), "EACCES");
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    if (name.rfind("relibd." + std::to_string(relibd) + ".", 0) == 0) {
      EXPECT_EQ(Call("identity", "open", entry.path().string()), "EACCES") << name;
    }
  }
  EXPECT_EQ(Call("identity", "open", relibd_->dir() + "/relibd.log"), "EACCES");
}

// Under the systemd unit's UMask=0077: relibd's copies still reach a worker
// of another user through the group (0440), including copies written into
// the unnamed files relibd's chore thread makes ahead (whose mode the umask
// would cut to 0400 if the chore did not set it).
TEST_F(WorkerUserTest, CopiesReachTheWorkerUnderTheUnitsUmask) {
  const mode_t previous = ::umask(0077);  // relibd inherits it
  StartDaemon({"--worker-user", worker_user_});
  ::umask(previous);
  if (HasFatalFailure()) return;
  LoadOrDie("m", k_service_v1);
  for (int i = 0; i < 4; ++i) {
    const bool odd = i % 2 == 0;
    auto reloaded = Reload("m", odd ? k_service_v2 : k_service_v1);
    ASSERT_TRUE(reloaded.ok()) << reloaded.error_message() << "\n" << relibd_->Log();
    EXPECT_EQ(Call("m", "version"), odd ? "v2" : "v1");
  }
}

TEST_F(WorkerUserTest, DefaultsToAnUnprivilegedUser) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-user", ""}));
  LoadOrDie("identity", k_identity);
  std::string ids = Call("identity", "ids");
  EXPECT_THAT(ids, ::testing::Not(::testing::StartsWith("uid=0 "))) << ids;
  EXPECT_THAT(ids, ::testing::EndsWith("groups=0 nnp=1"));
}

TEST_F(WorkerUserTest, RootWorkerOnlyWhenAskedFor) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-user", "root"}));
  LoadOrDie("identity", k_identity);
  EXPECT_THAT(Call("identity", "ids"), ::testing::StartsWith("uid=0 gid=0"));
  EXPECT_THAT(relibd_->Log(), ::testing::HasSubstr("modules run as root"));
}

// A privileged port for an unprivileged worker: relibd (root) listens and the
// module takes the socket from its fd store (examples/counter-service).
TEST_F(WorkerUserTest, PrivilegedPortReachesTheModuleThroughTheFdStore) {
  const int port = 700 + ::getpid() % 200;
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-user", worker_user_, "--preopen-tcp",
                                       "counter:listener=127.0.0.1:" + std::to_string(port)}));
  LoadOrDie("counter", kCounterServicePath);
  EXPECT_EQ(Call("counter", "port"), std::to_string(port));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  char line[32] = {};
  ASSERT_GT(::recv(fd, line, sizeof(line) - 1, 0), 0);
  ::close(fd);
  EXPECT_STREQ(line, "1\n");
}

// A large module reaches a worker under another user without a second copy:
// relibd places a hard link to its read-only copy in the worker's scratch
// dir; the unload proves "unmapped" by the maps scan (the worker does not own
// the file) and removes the link. A small one is still copied by the worker,
// which then owns the file and proves "unmapped" with a lease.
TEST_F(WorkerUserTest, LargeModuleIsLinkedIntoTheWorkerNotCopiedAgain) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-user", worker_user_}));
  pid_t worker = LoadOrDie("large", k_large);
  EXPECT_EQ(Call("large", "sum"), "6");
  auto mapped_file = [&](const std::string& tag) {
    for (const std::string& line : ModuleMappings(worker, tag)) {
      std::string path = line.substr(line.find('/'));
      if (path.find("/worker-") != std::string::npos) return path;
    }
    return std::string();
  };
  for (int version = 1; version <= 2; ++version) {
    std::string tag = "/large.v" + std::to_string(version) + ".";
    std::string mapped = mapped_file(tag);
    ASSERT_FALSE(mapped.empty()) << "version " << version;
    std::string good = relibd_->dir() + "/good/large.v" + std::to_string(version) + ".so";
    struct stat mapped_stat {}, good_stat {};
    ASSERT_EQ(::stat(mapped.c_str(), &mapped_stat), 0) << mapped;
    ASSERT_EQ(::stat(good.c_str(), &good_stat), 0) << good;
    EXPECT_EQ(mapped_stat.st_ino, good_stat.st_ino) << mapped << " should be a link to " << good;
    EXPECT_EQ(mapped_stat.st_uid, 0u) << "relibd's copy stays relibd's";
    EXPECT_EQ(mapped_stat.st_mode & 0222, 0u) << "and read-only";
    if (version == 1) {
      v1::ReloadResponse reload;
      ASSERT_TRUE(Reload("large", k_large, &reload).ok());
      EXPECT_TRUE(reload.report().unmapped()) << reload.report().DebugString();
      EXPECT_EQ(reload.report().unmapped_proof(), "/proc/self/maps");
      EXPECT_TRUE(ModuleMappings(worker, "/large.v1.").empty());
      // Removed right after the reply (ModuleLoader::FinishAfterReply).
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (std::filesystem::exists(mapped) && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      EXPECT_FALSE(std::filesystem::exists(mapped)) << "the worker removed the old version's link";
    }
  }
  std::string last = mapped_file("/large.v2.");
  v1::UnloadResponse unload;
  ASSERT_TRUE(Unload("large", &unload).ok());
  EXPECT_TRUE(unload.report().unmapped());
  EXPECT_FALSE(std::filesystem::exists(last));

  LoadOrDie("small", k_keys_maps);
  ASSERT_TRUE(Unload("small", &unload).ok());
  EXPECT_TRUE(unload.report().unmapped());
  EXPECT_EQ(unload.report().unmapped_proof(), "file lease");
}

}  // namespace
}  // namespace relib::testing
