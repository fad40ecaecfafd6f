// ModuleLoader in this process: real dlopen of CMake-built test modules,
// unmapping verified from /proc/self/maps.
#include "agent/module_loader.h"

#include <malloc.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "agent/elf_file.h"
#include "common/proc_maps.h"
#include "common/temp_dir.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::agent {
namespace {

using ::relib::testing::IsOk;
using ::relib::testing::StatusIs;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace paths = ::relib::testing;

class ModuleLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = common::TempDir::Create("/tmp", "relib-loader-test-");
    ASSERT_THAT(dir, IsOk());
    dir_.emplace(std::move(dir).value());
    loader_.emplace(dir_->path() + "", [this](int level, const std::string& module, std::string_view text) {
      std::lock_guard<std::mutex> lock(log_mutex_);
      logs_.push_back(module + ": " + std::string(text));
    });
  }
  void TearDown() override { loader_.reset(); }

  // Number of mappings of any file in the scratch directory.
  size_t ScratchMappings() {
    auto mappings = common::ReadMappings(0);
    EXPECT_THAT(mappings, IsOk());
    size_t count = 0;
    for (const auto& m : *mappings) count += m.path.rfind(dir_->path(), 0) == 0;
    return count;
  }

  std::string CopyTo(const char* from, const std::string& name) {
    std::string to = dir_->path() + "/" + name;
    std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
    return to;
  }

  absl::StatusOr<LoadInfo> Load(const std::string& name, const std::string& path, uint64_t version,
                                const ModuleOptions& options = {}) {
    return loader_->Load(name, path, version, options);
  }
  absl::StatusOr<UnloadReport> Unload(const std::string& name, bool force, const ModuleOptions* = nullptr) {
    UnloadReport report;
    absl::Status status = loader_->Unload(name, force, report);
    if (!status.ok()) return status;
    return report;
  }
  absl::StatusOr<LoadInfo> Reload(const std::string& name, const std::string& path, uint64_t version, bool force,
                                  UnloadReport& report) {
    return loader_->Reload(name, path, version, force, nullptr, report);
  }

  std::optional<common::TempDir> dir_;
  std::optional<ModuleLoader> loader_;
  std::mutex log_mutex_;
  std::vector<std::string> logs_;
};

TEST_F(ModuleLoaderTest, LoadCallUnloadLeavesNothingMapped) {
  auto info = Load("m", paths::k_versioned_v1, 1);
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->descriptor_name, "versioned");
  EXPECT_THAT(info->exports, Contains("version"));
  EXPECT_GT(ScratchMappings(), 0u);
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
  EXPECT_EQ(*loader_->Call("m", "echo", std::string("a\0b", 3)), std::string("a\0b", 3));
  EXPECT_THAT(logs_, Contains("m: versioned v1 loaded"));

  auto report = Unload("m", false);
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->unmapped);
  EXPECT_TRUE(report->remaining_mappings.empty());
  EXPECT_FALSE(report->before_unload_missing);
  EXPECT_TRUE(report->before_unload_error.empty());
  EXPECT_EQ(report->path, paths::k_versioned_v1);
  EXPECT_EQ(ScratchMappings(), 0u);
  EXPECT_FALSE(loader_->IsLoaded("m"));
}

TEST_F(ModuleLoaderTest, OriginalMayBeOverwrittenWhileLoaded) {
  std::string path = dir_->path() + "/live.so";
  std::filesystem::copy_file(paths::k_versioned_v1, path);
  ASSERT_THAT(Load("m", path, 1), IsOk());
  // What a compiler does: replace the file under the same name.
  std::filesystem::remove(path);
  std::filesystem::copy_file(paths::k_versioned_v2, path);
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
  UnloadReport report;
  ASSERT_THAT(Reload("m", path, 2, false, report), IsOk());
  EXPECT_TRUE(report.unmapped);
  EXPECT_EQ(report.version, 1u);
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v2");
}

// The checks read a small file whole in one read and a large one piece by
// piece (agent/elf_file.h, kWholeImageBytes): both find what pins a module
// and both accept a sound module.
TEST_F(ModuleLoaderTest, SmallAndLargeFilesAreCheckedAlike) {
  // Bytes after the section headers belong to nothing: the module stays sound.
  auto padded = [&](const std::string& from, const std::string& name) {
    std::string to = dir_->path() + "/" + name;
    std::filesystem::copy_file(from, to);
    std::filesystem::resize_file(to, std::filesystem::file_size(from) + kWholeImageBytes + 4096);
    return to;
  };
  for (const std::string& path : {std::string(paths::k_unique_raw), padded(paths::k_unique_raw, "unique_large.so")}) {
    auto info = Load("u", path, 1);
    ASSERT_THAT(info, IsOk()) << path;
    ASSERT_EQ(info->warnings.size(), 1u) << path;
    EXPECT_THAT(info->warnings[0], AllOf(HasSubstr("STB_GNU_UNIQUE"), HasSubstr("_ZN7CounterIiE5countE"))) << path;
    // (Only the first load stays mapped: glibc binds the second copy's
    // unique symbols to the first's, so nothing pins the second.)
    UnloadReport report;
    ASSERT_THAT(loader_->Unload("u", false, report), IsOk());
  }
  const std::string large = padded(paths::k_versioned_v1, "versioned_large.so");
  ASSERT_GT(std::filesystem::file_size(large), kWholeImageBytes);
  ASSERT_THAT(Load("m", large, 1), IsOk());
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
  UnloadReport report;
  ASSERT_THAT(Reload("m", paths::k_versioned_v2, 2, false, report), IsOk());
  EXPECT_TRUE(report.unmapped);
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v2");
}

TEST_F(ModuleLoaderTest, ModuleStateResetsOnReload) {
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  EXPECT_EQ(*loader_->Call("m", "count", ""), "1");
  EXPECT_EQ(*loader_->Call("m", "count", ""), "2");
  UnloadReport report;
  ASSERT_THAT(Reload("m", paths::k_versioned_v1, 2, false, report), IsOk());
  // A really fresh copy: static data starts over.
  EXPECT_EQ(*loader_->Call("m", "count", ""), "1");
}

TEST_F(ModuleLoaderTest, BadFilesAreRejectedWithTheirCause) {
  std::string text = dir_->path() + "/text.so";
  std::ofstream(text) << "not a library";
  EXPECT_THAT(Load("a", "/nonexistent/x.so", 1),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("does not exist")));
  EXPECT_THAT(Load("b", text, 1), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an ELF")));
  EXPECT_THAT(Load("c", paths::kRelibctlPath, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::AnyOf(HasSubstr("not a shared object"),
                                                                            HasSubstr("dlopen"))));
  EXPECT_THAT(Load("d", paths::k_no_descriptor, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a relib module")));
  EXPECT_THAT(Load("e", paths::k_wrong_abi, 1),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("ABI version 99")));
  EXPECT_THAT(Load("f", paths::k_on_load_fails, 1),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("on_load"), HasSubstr("database not reachable"))));
  for (const char* name : {"a", "b", "c", "d", "e", "f"}) EXPECT_FALSE(loader_->IsLoaded(name));
  EXPECT_EQ(ScratchMappings(), 0u);
  // Nothing but the test's own text file is left in the scratch dir.
  size_t files = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir_->path())) files += entry.path() != text;
  EXPECT_EQ(files, 0u);
}

TEST_F(ModuleLoaderTest, NameTakenAndUnknownNames) {
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  EXPECT_THAT(Load("m", paths::k_versioned_v2, 1), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
  EXPECT_THAT(loader_->Call("nope", "version", ""), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Unload("nope", false), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(loader_->Call("m", "missing", ""),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("no export 'missing'"), HasSubstr("version"))));
}

TEST_F(ModuleLoaderTest, ExportExceptionBecomesError) {
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  EXPECT_THAT(loader_->Call("m", "fail", "boom"),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("asked to fail: boom")));
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
}

TEST_F(ModuleLoaderTest, OutputOverTheLimitFailsTheCallOnly) {
  loader_->set_output_limit(10);
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  EXPECT_THAT(loader_->Call("m", "echo", std::string(11, 'a')),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("output of export 'echo' of module 'm' exceeds the limit of 10 bytes (at least 11 "
                                 "bytes)")));
  EXPECT_EQ(*loader_->Call("m", "echo", "0123456789"), "0123456789");
  // An export's error text (within the limit) is cut to a few KiB for gRPC's metadata.
  loader_->set_output_limit(1 << 20);
  EXPECT_THAT(loader_->Call("m", "fail", std::string(5000, 'e')),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("bytes in all)")));
}

// glibc keeps exit handlers (a library's static destructors, registered
// with its dso handle) in one list and reuses freed slots only at its end.
// A reload opens the new version before it closes the old one, so the new
// version's entries went in after the old one's, whose slots, freed at its
// dlclose, were never used again: 32 bytes per static destructor per reload,
// for the life of the worker, and a longer list for every later dlclose to
// walk (seen in a plain process: 33 bytes and +23 µs per dlopen + dlclose
// after 20,000 such reloads; the worker's RSS grew ~300 KiB per 10,000
// reloads of the bench module). Each version's destructors still run
// exactly once, at its own unload.
TEST_F(ModuleLoaderTest, ReloadsDoNotGrowGlibcsExitHandlerList) {
  const std::string log = dir_->path() + "/dtor.log";
  ::setenv("RELIB_TEST_DTOR_LOG", log.c_str(), 1);
  ASSERT_THAT(Load("m", paths::k_static_dtor, 1), IsOk());
  UnloadReport report;
  uint64_t version = 1;
  for (int i = 0; i < 5; ++i) ASSERT_THAT(Reload("m", paths::k_static_dtor, ++version, false, report), IsOk());
  constexpr int kReloads = 100;
  const size_t before = ::mallinfo2().uordblks;
  for (int i = 0; i < kReloads; ++i) {
    ASSERT_THAT(Reload("m", paths::k_static_dtor, ++version, false, report), IsOk());
    ASSERT_TRUE(report.unmapped) << "reload " << i;
  }
  const size_t after = ::mallinfo2().uordblks;
  // 501 registrations a version: 100 reloads that lose their slots are ~1.6 MB.
  EXPECT_LT(after > before ? after - before : 0, size_t{256} << 10)
      << "glibc's heap grew by " << after - before << " bytes over " << kReloads << " reloads";
  EXPECT_EQ(std::filesystem::file_size(log), version - 1) << "one destructor run per replaced version";
  ASSERT_THAT(Unload("m", false), IsOk());
  EXPECT_EQ(std::filesystem::file_size(log), version);
  ::unsetenv("RELIB_TEST_DTOR_LOG");
}

// A reload that opened the new version (its static destructors' exit
// registrations held back, see exits::Hold) and then discards it must pass
// them to glibc before that version's dlclose: its destructors run there,
// exactly once (never: held for ever; twice: a bug in the hand-over).
class HeldDestructorsTest : public ModuleLoaderTest {
 protected:
  void SetUp() override {
    ModuleLoaderTest::SetUp();
    log_ = dir_->path() + "/dtor.log";
    ::setenv("RELIB_TEST_DTOR_LOG", log_.c_str(), 1);
  }
  void TearDown() override {
    ModuleLoaderTest::TearDown();
    ::unsetenv("RELIB_TEST_DTOR_LOG");
  }
  // Versions of static_dtor whose destructors ran.
  uintmax_t DestructorRuns() {
    std::error_code error;
    uintmax_t size = std::filesystem::file_size(log_, error);
    return error ? 0 : size;
  }
  std::string log_;
};

TEST_F(HeldDestructorsTest, RunOnceWhenTheOldVersionsBeforeUnloadRefuses) {
  ASSERT_THAT(Load("m", paths::k_before_unload_fails, 1), IsOk());
  UnloadReport report;
  EXPECT_THAT(Reload("m", paths::k_static_dtor, 2, false, report),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("still flushing")));
  EXPECT_EQ(*loader_->Call("m", "version", ""), "stubborn");
  EXPECT_EQ(DestructorRuns(), 1u) << "the discarded new version's destructors";
  ASSERT_THAT(Unload("m", true), IsOk());
  EXPECT_EQ(DestructorRuns(), 1u);
  EXPECT_EQ(ScratchMappings(), 0u);
}

// True while a thread of this process has `name` (its comm).
bool ThreadNamed(const std::string& name) {
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", error)) {
    std::ifstream comm(task.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) return true;
  }
  return false;
}

TEST_F(HeldDestructorsTest, RunOnceWhenTheOldVersionKeepsALiveThread) {
  ModuleOptions options;
  options.thread_grace = std::chrono::milliseconds(10);
  ASSERT_THAT(Load("t", paths::k_threads, 1, options), IsOk());
  // Runs until before_unload, then lingers 100 ms: longer than the grace.
  ASSERT_THAT(loader_->Call("t", "spawn_stopping", ""), IsOk());
  UnloadReport report;
  EXPECT_THAT(Reload("t", paths::k_static_dtor, 2, false, report), ::testing::Not(IsOk()));
  EXPECT_FALSE(report.live_threads.empty());
  EXPECT_EQ(*loader_->Call("t", "ping", ""), "pong");
  EXPECT_EQ(DestructorRuns(), 1u) << "the discarded new version's destructors";
  // The thread leaves ~100 ms after before_unload: wait until it is gone.
  const auto gone_by = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (ThreadNamed("stopping") && std::chrono::steady_clock::now() < gone_by) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_THAT(Unload("t", false), IsOk());
  EXPECT_EQ(DestructorRuns(), 1u);
  EXPECT_EQ(ScratchMappings(), 0u);
}

TEST_F(HeldDestructorsTest, RunOnceWhenTheNewVersionIsRefusedAfterDlopen) {
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  UnloadReport report;
  EXPECT_THAT(Reload("m", paths::k_static_dtor_wrong_abi, 2, false, report),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("ABI version")));
  EXPECT_EQ(DestructorRuns(), 1u) << "the refused version's destructors, at its dlclose";
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
  // The next version's registrations are held and released as usual.
  ASSERT_THAT(Reload("m", paths::k_static_dtor, 3, false, report), IsOk());
  EXPECT_EQ(DestructorRuns(), 1u);
  ASSERT_THAT(Unload("m", false), IsOk());
  EXPECT_EQ(DestructorRuns(), 2u);
  EXPECT_EQ(ScratchMappings(), 0u);
}

TEST_F(ModuleLoaderTest, ReloadToBadFileKeepsOldVersion) {
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  UnloadReport report;
  EXPECT_THAT(Reload("m", paths::k_no_descriptor, 2, false, report),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(report.name.empty());  // the old version was never touched
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
}

TEST_F(ModuleLoaderTest, ReloadWhoseOnLoadFailsRollsBack) {
  ASSERT_THAT(Load("m", paths::k_versioned_v1, 1), IsOk());
  UnloadReport report;
  EXPECT_THAT(Reload("m", paths::k_on_load_fails, 2, false, report),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("database not reachable"), HasSubstr("version 1 was loaded again"))));
  EXPECT_TRUE(report.unmapped);
  EXPECT_EQ(*loader_->Call("m", "version", ""), "v1");
  ASSERT_THAT(Unload("m", false), IsOk());
  EXPECT_EQ(ScratchMappings(), 0u);
}

TEST_F(ModuleLoaderTest, FailingBeforeUnloadRefusesUnlessForced) {
  ASSERT_THAT(Load("m", paths::k_before_unload_fails, 1), IsOk());
  EXPECT_THAT(Unload("m", false),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("still flushing")));
  EXPECT_TRUE(loader_->IsLoaded("m"));
  EXPECT_EQ(*loader_->Call("m", "version", ""), "stubborn");
  auto report = Unload("m", true);
  ASSERT_THAT(report, IsOk());
  EXPECT_THAT(report->before_unload_error, HasSubstr("still flushing"));
  EXPECT_TRUE(report->unmapped);
  EXPECT_FALSE(loader_->IsLoaded("m"));
}

TEST_F(ModuleLoaderTest, ModuleWithoutHooksIsReportedSo) {
  ASSERT_THAT(Load("u", paths::k_unique_sdk, 1), IsOk());
  auto report = Unload("u", false);
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->before_unload_missing);
  EXPECT_TRUE(report->unmapped);
}

TEST_F(ModuleLoaderTest, CModuleWorks) {
  ASSERT_THAT(Load("c", paths::kHelloCPath, 1), IsOk());
  EXPECT_EQ(*loader_->Call("c", "greet", "tests"), "Hello from C, tests!");
  EXPECT_THAT(loader_->Call("c", "length", ""), StatusIs(absl::StatusCode::kUnknown, HasSubstr("empty input")));
  auto report = Unload("c", false);
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->unmapped);
}

}  // namespace
}  // namespace relib::agent
