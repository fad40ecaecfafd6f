// How many times a module file is copied on its way into a worker, and how
// fast a crashed module serves again: relibd's copy is read-only and the
// worker hard-links it instead of copying it a second time; a first crash
// restarts the worker at once, without the backoff.
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "tests/event_log.h"
#include "tests/relibd_fixture.h"
#include "tests/test_paths.h"
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
