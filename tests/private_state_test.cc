// Module state and flight recorders are relibd's alone: mode 0600, owned by
// relibd, in /dev/shm and in --state-dir (checked on real files of a real
// relibd).
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

class PrivateStateTest : public RelibdTest {
 protected:
  void SetUp() override {}
  static ::testing::AssertionResult Private(const std::string& path) {
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return ::testing::AssertionFailure() << path << " missing";
    if ((st.st_mode & 07777) != 0600 || st.st_uid != ::geteuid()) {
      char mode[8];
      std::snprintf(mode, sizeof(mode), "0%o", static_cast<unsigned>(st.st_mode & 07777));
      return ::testing::AssertionFailure() << path << " has mode " << mode << " owner " << st.st_uid;
    }
    return ::testing::AssertionSuccess();
  }
};

TEST_F(PrivateStateTest, SharedMemorySegmentsAreOwnerOnly) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  LoadOrDie("hello", kHelloPath);
  pid_t pid = relibd_->process().pid();
  EXPECT_TRUE(Private("/dev/shm/relibd." + std::to_string(pid) + ".state"));
  int recorders = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    std::string prefix = "relibd." + std::to_string(pid) + ".";
    if (name.rfind(prefix, 0) != 0 || name == prefix + "state") continue;
    ++recorders;
    EXPECT_TRUE(Private(entry.path().string()));
  }
  EXPECT_GE(recorders, 1) << "no flight recorder segment found";
}

TEST_F(PrivateStateTest, StateDirFileIsOwnerOnlyEvenIfItWasNot) {
  auto dir = common::TempDir::Create("/tmp", "relib-state-");
  ASSERT_THAT(dir, IsOk());
  std::string state_dir = dir->path() + "/state";
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--state-dir", state_dir, "--state-store-mb", "1"}));
  LoadOrDie("hello", kHelloPath);
  EXPECT_TRUE(Private(state_dir + "/module-state.bin"));
  struct stat st{};
  ASSERT_EQ(::stat(state_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  relibd_->Stop();
  // An operator (or an older relibd) left it readable: tightened at start.
  ::chmod((state_dir + "/module-state.bin").c_str(), 0644);
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--state-dir", state_dir, "--state-store-mb", "1"}));
  EXPECT_TRUE(Private(state_dir + "/module-state.bin"));
}

}  // namespace
}  // namespace relib::testing
