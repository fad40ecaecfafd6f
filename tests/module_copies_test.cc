// How many times a module file is copied on its way into a worker, and how
// fast a crashed module serves again: relibd's copy is read-only and the
// worker hard-links it instead of copying it a second time; a first crash
// restarts the worker at once, without the backoff.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "tests/event_log.h"
#include "tests/relibd_fixture.h"
#include "tests/test_paths.h"
#include "tests/test_users.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

using Clock = std::chrono::steady_clock;

// The file the worker mapped for module version `tag` (e.g. "m.v1."), found
// in its /proc/PID/maps.
bool GoneWithin(const std::string& path, std::chrono::milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (std::filesystem::exists(path)) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::string MappedCopy(pid_t worker, const std::string& tag) {
  auto mappings = common::ReadMappings(worker);
  if (!mappings.ok()) return "";
  for (const auto& m : *mappings) {
    if (m.path.find("/worker-") != std::string::npos && m.path.find(tag) != std::string::npos) return m.path;
  }
  return "";
}

TEST_F(RelibdTest, WorkerLinksRelibdsReadOnlyCopyInsteadOfCopyingAgain) {
  std::string path = Copy(k_versioned_v1, "mod.so");
  v1::LoadResponse loaded;
  ASSERT_TRUE(Load("m", path, &loaded).ok());
  pid_t worker = loaded.module().worker_pid();
  std::string good = relibd_->dir() + "/good/m.v1.so";
  struct stat good_stat {};
  ASSERT_EQ(::stat(good.c_str(), &good_stat), 0) << good;
  EXPECT_EQ(good_stat.st_mode & 0777, 0400u) << "relibd's copy is never written again";
  std::string mapped = MappedCopy(worker, "/m.v1.");
  ASSERT_FALSE(mapped.empty());
  struct stat mapped_stat {};
  ASSERT_EQ(::stat(mapped.c_str(), &mapped_stat), 0) << mapped;
  EXPECT_EQ(mapped_stat.st_ino, good_stat.st_ino) << mapped << " should be a link to " << good;
  EXPECT_EQ(mapped_stat.st_nlink, 2u);

  // Overwriting the user's file in place touches neither, and a reload
  // gets the new build (a new inode), never the old one by its inode.
  Copy(k_versioned_v2, "mod.so");
  EXPECT_EQ(Call("m", "version"), "v1");
  ASSERT_TRUE(Reload("m", path).ok());
  EXPECT_EQ(Call("m", "version"), "v2");
  // Removed after the reply, on relibd's io thread.
  EXPECT_TRUE(GoneWithin(good, std::chrono::seconds(2))) << "the old version's copy is removed after the reload";
  EXPECT_TRUE(MappedCopy(worker, "/m.v1.").empty());
}

// The old version's copy goes after the reply; a new copy that takes its name
// meanwhile (unload, then load again: version 1 again) is never the one
// removed, and every copy is a new read-only inode.
TEST_F(RelibdTest, DeferredRemovalOfAnOldCopyNeverRemovesANewCopyOfThatName) {
  std::string good_v1 = relibd_->dir() + "/good/m.v1.so";
  std::string good_v2 = relibd_->dir() + "/good/m.v2.so";
  for (int round = 0; round < 20; ++round) {
    ASSERT_TRUE(Load("m", k_versioned_v1).ok());
    struct stat first {};
    ASSERT_EQ(::stat(good_v1.c_str(), &first), 0);
    ASSERT_TRUE(Reload("m", k_versioned_v2).ok());  // posts the removal of m.v1.so
    ASSERT_TRUE(Unload("m").ok());
    ASSERT_TRUE(Load("m", k_versioned_v1).ok());  // m.v1.so again, a new inode
    struct stat again {};
    ASSERT_EQ(::stat(good_v1.c_str(), &again), 0);
    EXPECT_EQ(again.st_mode & 0777, 0400u);
    // Past the chore thread's latest time for a deferred removal (100 ms).
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    ASSERT_TRUE(std::filesystem::exists(good_v1)) << "round " << round << ": the new copy was removed";
    EXPECT_FALSE(std::filesystem::exists(good_v2));
    EXPECT_EQ(Call("m", "version"), "v1");
    ASSERT_TRUE(Unload("m").ok());
  }
}

// With default flags the backoff is 100 ms; here 1.5 s, which a first crash
// must not wait for (before the change it waited the full backoff).
// A worker under another user copies the module file through relibd's open
// descriptor while relibd writes its own copy from it (daemon/supervisor.cc
// Reload). The user's file is rewritten in place all along: every reload
// either fails with the module still serving a version it loaded, or leaves
// relibd's last-good copy byte for byte what the worker mapped, and that is
// one whole build of the module.
class UnprivilegedWorkerCopiesTest : public RelibdTest {
 protected:
  void SetUp() override {}  // each test starts relibd with its worker user
};

TEST_F(UnprivilegedWorkerCopiesTest, CopiesMadeAtOnceAreTheSameWhileTheFileIsRewrittenInPlace) {
  if (!TestUsers::CanCreate()) GTEST_SKIP() << "a worker under another user needs relibd as root";
  TestUsers users;
  const std::string group = users.AddGroup("c");
  ASSERT_FALSE(group.empty());
  const std::string user = users.AddUser("c", {group});
  ASSERT_FALSE(user.empty());
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--worker-user", user}));
  const std::string builds[2] = {ReadAll(k_versioned_v1), ReadAll(k_versioned_v2)};
  ASSERT_NE(builds[0], builds[1]);
  const std::string path = Copy(k_versioned_v1, "mod.so");
  ASSERT_TRUE(Load("m", path).ok());

  std::atomic<bool> stop{false};
  std::atomic<int> rewrites{0};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      // In place: the same inode, truncated and written again.
      int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
      if (fd < 0) continue;
      const std::string& bytes = builds[i % 2];
      for (size_t done = 0; done < bytes.size();) {
        ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n <= 0) break;
        done += static_cast<size_t>(n);
      }
      ::close(fd);
      rewrites.fetch_add(1);
      // Quiet spells too, so that reloads also meet a whole file.
      std::this_thread::sleep_for(std::chrono::microseconds(i % 3 == 0 ? 2000 : 100));
    }
  });
  int reloaded = 0, refused = 0;
  for (int i = 0; i < 150; ++i) {
    v1::ReloadResponse response;
    grpc::Status status = Reload("m", path, &response);
    if (!status.ok()) {
      if (refused++ < 3) std::printf("refused: %s\n", status.error_message().c_str());
      // Refused cleanly: the module still serves one of its builds.
      std::string version = Call("m", "version");
      EXPECT_TRUE(version == "v1" || version == "v2") << version << " after: " << status.error_message();
      continue;
    }
    ++reloaded;
    const uint64_t v = response.module().version();
    const std::string good = ReadAll(relibd_->dir() + "/good/m.v" + std::to_string(v) + ".so");
    const std::string mapped = MappedCopy(response.module().worker_pid(), "/m.v" + std::to_string(v) + ".");
    ASSERT_FALSE(mapped.empty()) << "version " << v;
    ASSERT_TRUE(good == ReadAll(mapped)) << "relibd's copy of version " << v << " is not what the worker mapped";
    const int build = good == builds[0] ? 0 : good == builds[1] ? 1 : -1;
    ASSERT_NE(build, -1) << "version " << v << " is no whole build (" << good.size() << " bytes)";
    EXPECT_EQ(Call("m", "version"), build == 0 ? "v1" : "v2");
  }
  stop.store(true);
  writer.join();
  EXPECT_GT(reloaded, 0);
  EXPECT_GT(rewrites.load(), 0);
  RecordProperty("reloaded", reloaded);
  RecordProperty("refused", refused);
  std::printf("reloads: %d done, %d refused; %d rewrites of the file\n", reloaded, refused, rewrites.load());
}

TEST_F(RelibdTest, FirstCrashRestartsWithoutTheBackoff) {
  relibd_.reset();
  StartDaemon({"--restart-backoff-ms", "1500"});
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  auto start = Clock::now();
  grpc::Status status;
  Call("m", "crash", "", &status);
  ASSERT_FALSE(status.ok());
  for (;;) {
    Call("m", "version", "", &status);
    if (status.ok() || Clock::now() - start > std::chrono::seconds(10)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1000));
  // A second crash soon after the restart is a failed restart: it waits.
  start = Clock::now();
  Call("m", "crash", "", &status);
  for (;;) {
    Call("m", "version", "", &status);
    if (status.ok() || Clock::now() - start > std::chrono::seconds(20)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(1500));
}

}  // namespace
}  // namespace relib::testing
