// Watch-and-reload with real files written the ways builds write them: in
// pieces, by rename into place, broken, and in bursts. Each test counts the
// reloads in relibd's Events stream and asks the module which build answers.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/event_log.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// Writes `bytes` to `fd` completely.
void WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    ASSERT_GT(n, 0);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

// As a compiler or editor does: truncate and rewrite in place.
void Rewrite(const std::string& path, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0755);
  ASSERT_GE(fd, 0);
  WriteAll(fd, bytes);
  ::close(fd);
}

class WatchTest : public RelibdTest {
 protected:
  void SetUp() override {
    RelibdTest::SetUp();
    v1_ = ReadAll(k_versioned_v1);
    v2_ = ReadAll(k_versioned_v2);
    ASSERT_FALSE(v1_.empty());
    module_ = relibd_->dir() + "/build/libwatched.so";
    fs::create_directories(fs::path(module_).parent_path());
    Rewrite(module_, v1_);
    CommandResult r = relibd_->Ctl({"load", "w", module_, "--watch"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_THAT(r.out, HasSubstr("(watched)"));
    events_ = std::make_unique<EventLog>(relibd_->stub());
  }
  void TearDown() override {
    events_.reset();
    RelibdTest::TearDown();
  }
  std::string Version() { return relibd_->Ctl({"call", "w", "version"}).out; }
  std::vector<v1::Event> Reloads() {
    return events_->All([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_RELOADED && e.module() == "w"; });
  }
  std::vector<v1::Event> Failures() {
    return events_->All([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_FAILED && e.module() == "w"; });
  }
  // Waits up to `limit` for `count` reloads, then the debounce time twice
  // more so that an extra reload would show.
  void SettleAfter(size_t count, std::chrono::milliseconds limit = 5000ms) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (Reloads().size() + Failures().size() < count && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(20ms);
    }
    std::this_thread::sleep_for(600ms);
  }

  std::string v1_, v2_, module_;
  std::unique_ptr<EventLog> events_;
};

TEST_F(WatchTest, ABuildWrittenInPiecesIsReloadedOnceWhenComplete) {
  int fd = ::open(module_.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  WriteAll(fd, std::string_view(v2_).substr(0, v2_.size() / 2));
  std::this_thread::sleep_for(700ms);  // longer than the debounce: a half-written file must not load
  EXPECT_TRUE(Reloads().empty());
  EXPECT_TRUE(Failures().empty());
  WriteAll(fd, std::string_view(v2_).substr(v2_.size() / 2));
  ::close(fd);
  SettleAfter(1);
  auto reloads = Reloads();
  ASSERT_EQ(reloads.size(), 1u);
  EXPECT_EQ(reloads[0].cause(), "watch");
  EXPECT_EQ(reloads[0].version(), 2u);
  EXPECT_TRUE(reloads[0].report().unmapped());
  EXPECT_TRUE(Failures().empty());
  EXPECT_EQ(Version(), "v2");
}

TEST_F(WatchTest, ARenameIntoPlaceIsOneReload) {
  const std::string temp = module_ + ".tmp";
  Rewrite(temp, v2_);  // the temporary file's own writes are not the module's
  fs::rename(temp, module_);
  SettleAfter(1);
  ASSERT_EQ(Reloads().size(), 1u);
  EXPECT_EQ(Version(), "v2");
}

TEST_F(WatchTest, ABrokenBuildLeavesTheRunningVersionAndSaysWhy) {
  Rewrite(module_, std::string_view(v2_).substr(0, v2_.size() / 3));  // cut short, as by a crashed linker
  SettleAfter(1);
  EXPECT_TRUE(Reloads().empty());
  auto failures = Failures();
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].cause(), "watch");
  EXPECT_THAT(failures[0].message(), HasSubstr(module_));
  EXPECT_EQ(Version(), "v1");

  // The next good build is picked up.
  Rewrite(module_, v2_);
  SettleAfter(2);
  ASSERT_EQ(Reloads().size(), 1u);
  EXPECT_EQ(Version(), "v2");
}

TEST_F(WatchTest, ABurstOfSavesIsOneReload) {
  for (int i = 0; i < 20; ++i) {
    Rewrite(module_, i % 2 ? v1_ : v2_);
    std::this_thread::sleep_for(5ms);
  }
  Rewrite(module_, v2_);  // the last save is v2
  SettleAfter(1);
  EXPECT_EQ(Reloads().size(), 1u);
  EXPECT_TRUE(Failures().empty());
  EXPECT_EQ(Version(), "v2");
}

TEST_F(WatchTest, WatchOffStopsReloadsAndEventsShowTheCause) {
  CommandResult r = relibd_->Ctl({"watch", "w", "--off"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("(watched)")));
  Rewrite(module_, v2_);
  std::this_thread::sleep_for(800ms);
  EXPECT_TRUE(Reloads().empty());
  EXPECT_EQ(Version(), "v1");

  ASSERT_EQ(relibd_->Ctl({"watch", "w"}).exit_code, 0);
  std::thread writer([&] {
    std::this_thread::sleep_for(300ms);
    Rewrite(module_, v1_);
  });
  r = relibd_->Ctl({"events", "--count", "1"});
  writer.join();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::AllOf(HasSubstr("reloaded module=w version=2 cause=watch"), HasSubstr("unmapped=yes")));

  EXPECT_EQ(relibd_->Ctl({"watch", "ghost"}).exit_code, 1);
}

}  // namespace
}  // namespace relib::testing
