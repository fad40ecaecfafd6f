// Files that are not ready or not modules: half-written .so files, libraries
// without a descriptor, FIFOs, devices, directories and oversized files are
// refused with INVALID_ARGUMENT naming the user's path, before anything of
// them runs, and a module already in the same worker never notices.
#include <elf.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "tests/relibd_fixture.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// The file-backed extents of the PT_LOAD segments of `path`.
struct Extent {
  uint64_t offset;
  uint64_t size;
};
std::vector<Extent> LoadSegments(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Elf64_Ehdr header{};
  in.read(reinterpret_cast<char*>(&header), sizeof(header));
  std::vector<Extent> extents;
  for (int i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr ph{};
    in.seekg(static_cast<std::streamoff>(header.e_phoff + i * sizeof(Elf64_Phdr)));
    in.read(reinterpret_cast<char*>(&ph), sizeof(ph));
    if (ph.p_type == PT_LOAD && ph.p_filesz > 0) extents.push_back({ph.p_offset, ph.p_filesz});
  }
  return extents;
}

// A copy of `from` cut at byte `size` (what a reader sees while a linker
// appends to the file).
void WriteTruncated(const std::string& from, const std::string& to, uint64_t size) {
  std::filesystem::remove(to);
  std::filesystem::copy_file(from, to);
  std::filesystem::resize_file(to, size);
}

// A copy of `from` of the same size whose bytes from `offset` on are zero
// (what a reader sees when a linker preallocates the file and fills it in).
void WriteZeroTail(const std::string& from, const std::string& to, uint64_t offset) {
  std::filesystem::remove(to);
  std::filesystem::copy_file(from, to);
  uint64_t size = std::filesystem::file_size(to);
  std::fstream out(to, std::ios::binary | std::ios::in | std::ios::out);
  out.seekp(static_cast<std::streamoff>(offset));
  std::string zeros(size - offset, '\0');
  out.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
}

// Drops the section headers from the ELF header of `path` (they are optional;
// sstrip-like tools remove them), so only the program headers describe it.
void DropSectionHeaders(const std::string& path) {
  std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
  Elf64_Ehdr header{};
  file.read(reinterpret_cast<char*>(&header), sizeof(header));
  header.e_shoff = 0;
  header.e_shnum = 0;
  header.e_shstrndx = SHN_UNDEF;
  file.seekp(0);
  file.write(reinterpret_cast<const char*>(&header), sizeof(header));
}

class ModuleFileTest : public RelibdTest {
 protected:
  void SetUp() override {
    // Read by testcase ctor_marker's constructor in the worker.
    marker_ = std::filesystem::temp_directory_path() / ("relib-ctor-marker-" + std::to_string(::getpid()));
    std::filesystem::remove(marker_);
    ::setenv("RELIB_TEST_CTOR_MARKER", marker_.c_str(), 1);
  }
  void TearDown() override {
    RelibdTest::TearDown();
    std::filesystem::remove(marker_);
  }

  // Loads with a deadline, so a load that blocks fails the test instead of
  // hanging it.
  grpc::Status LoadWithin(const std::string& name, const std::string& path, int seconds = 20) {
    v1::LoadRequest request;
    request.set_name(name);
    request.set_path(path);
    v1::LoadResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return relibd_->stub().Load(&context, request, &response);
  }

  // A healthy module in the default worker; its pid must never change.
  void LoadBystander() {
    v1::LoadResponse loaded;
    ASSERT_TRUE(Load("bystander", kHelloPath, &loaded).ok());
    bystander_pid_ = loaded.module().worker_pid();
    ASSERT_GT(bystander_pid_, 0);
  }
  void ExpectBystanderUntouched(const std::string& after) {
    const v1::ModuleInfo* info = nullptr;
    v1::StatusResponse status = Status();
    info = FindModule(status, "bystander");
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->worker_pid(), bystander_pid_) << "worker restarted after " << after;
    EXPECT_EQ(info->state(), v1::MODULE_STATE_LOADED) << after;
    EXPECT_EQ(Call("bystander", "greet", "still here"), "Hello, still here!") << after;
  }

  // The refusal every bad file gets: INVALID_ARGUMENT naming the user's path
  // and the reason, never relibd's or the worker's private copy.
  void ExpectRefused(const grpc::Status& status, const std::string& path, const std::string& reason,
                     const std::string& what) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << what << ": " << status.error_message();
    EXPECT_THAT(status.error_message(),
                AllOf(HasSubstr(path), HasSubstr(reason), Not(HasSubstr(relibd_->dir() + "/good")),
                      Not(HasSubstr("/worker-"))))
        << what;
  }

  std::filesystem::path marker_;
  pid_t bystander_pid_ = 0;
};

TEST_F(ModuleFileTest, FileCutInsideALoadSegmentIsRefusedBeforeDlopen) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  ASSERT_NO_FATAL_FAILURE(LoadBystander());
  auto segments = LoadSegments(kHelloPath);
  ASSERT_GE(segments.size(), 2u);
  for (size_t i = 0; i < segments.size(); ++i) {
    std::string path = relibd_->dir() + "/cut" + std::to_string(i) + ".so";
    uint64_t cut = segments[i].offset + segments[i].size / 2;
    WriteTruncated(kHelloPath, path, cut);
    std::string what = "cut at byte " + std::to_string(cut) + " (inside PT_LOAD " + std::to_string(i) + ")";
    ExpectRefused(LoadWithin("cut" + std::to_string(i), path), path, "incomplete", what);
    ExpectBystanderUntouched(what);
    // Without section headers only the program headers can tell.
    DropSectionHeaders(path);
    what += " without section headers";
    ExpectRefused(LoadWithin("cut" + std::to_string(i), path), path, "incomplete", what);
    ExpectBystanderUntouched(what);
  }
  // The intact file without section headers still loads.
  std::string whole = Copy(kHelloPath, "no-sections.so");
  DropSectionHeaders(whole);
  EXPECT_TRUE(Load("whole", whole).ok());
  EXPECT_EQ(Call("whole", "greet", "x"), "Hello, x!");
}

TEST_F(ModuleFileTest, FullSizeFileWithZeroTailIsRefusedBeforeDlopen) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  ASSERT_NO_FATAL_FAILURE(LoadBystander());
  auto segments = LoadSegments(kHelloPath);
  ASSERT_GE(segments.size(), 2u);
  // Zeros from the middle of each loadable segment, and from the end of the
  // last one (only the non-loaded sections and the section headers missing).
  std::vector<uint64_t> offsets;
  for (const Extent& segment : segments) offsets.push_back(segment.offset + segment.size / 2);
  offsets.push_back(segments.back().offset + segments.back().size);
  for (size_t i = 0; i < offsets.size(); ++i) {
    std::string path = relibd_->dir() + "/zero" + std::to_string(i) + ".so";
    WriteZeroTail(kHelloPath, path, offsets[i]);
    ASSERT_EQ(std::filesystem::file_size(path), std::filesystem::file_size(kHelloPath));
    std::string what = "zeros from byte " + std::to_string(offsets[i]);
    ExpectRefused(LoadWithin("zero" + std::to_string(i), path), path, "incomplete", what);
    ExpectBystanderUntouched(what);
  }
  // The intact file still loads.
  EXPECT_TRUE(Load("whole", kHelloPath).ok());
}

TEST_F(ModuleFileTest, LibraryWithoutDescriptorIsRefusedWithoutRunningItsConstructors) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  ASSERT_NO_FATAL_FAILURE(LoadBystander());
  std::string path = Copy(k_ctor_marker, "plain.so");
  ExpectRefused(LoadWithin("plain", path), path, "not a relib module", "library without descriptor");
  EXPECT_THAT(LoadWithin("plain", path).error_message(), HasSubstr("relib_module_descriptor_v"));
  EXPECT_FALSE(std::filesystem::exists(marker_)) << "the library's static constructor ran";
  ExpectBystanderUntouched("library without descriptor");
  // Reloading a module to such a library is refused the same way.
  ASSERT_TRUE(Load("m", k_versioned_v1).ok());
  ExpectRefused(Reload("m", path), path, "not a relib module", "reload to library without descriptor");
  EXPECT_FALSE(std::filesystem::exists(marker_)) << "the library's static constructor ran";
  EXPECT_EQ(Call("m", "version"), "v1");
}

TEST_F(ModuleFileTest, FifoDeviceAndDirectoryAreRefusedWithoutBlocking) {
  // /dev allowed, so that /dev/zero reaches the file-type check.
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--allow-module-dir", "/dev"}));
  ASSERT_NO_FATAL_FAILURE(LoadBystander());
  std::string fifo = relibd_->dir() + "/pipe.so";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectRefused(LoadWithin("fifo", fifo, 10), fifo, "FIFO", "fifo");
  ExpectRefused(LoadWithin("zero", "/dev/zero", 10), "/dev/zero", "character device", "/dev/zero");
  std::string dir = relibd_->dir() + "/dir.so";
  std::filesystem::create_directory(dir);
  ExpectRefused(LoadWithin("dir", dir, 10), dir, "directory", "directory");
  ExpectBystanderUntouched("special files");
  // Nothing of them was copied.
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(relibd_->dir() + "/good", ignored)) {
    EXPECT_THAT(entry.path().filename().string(), HasSubstr("bystander")) << "unexpected copy";
  }
}

TEST_F(ModuleFileTest, FileOverSizeLimitIsRefusedBeforeAnyCopy) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--max-module-size-mb", "1"}));
  ASSERT_NO_FATAL_FAILURE(LoadBystander());
  // An ELF file (a real module) grown to 3 MiB with a hole: cheap to make.
  std::string path = Copy(kHelloPath, "huge.so");
  std::filesystem::resize_file(path, 3u << 20);
  ExpectRefused(LoadWithin("huge", path), path, "3145728 bytes", "oversized file");
  EXPECT_THAT(LoadWithin("huge", path).error_message(), AllOf(HasSubstr("1048576"), HasSubstr("--max-module-size-mb")));
  // No copy of it anywhere under the run dir (relibd's good dir or a worker's
  // scratch dir).
  for (const auto& entry : std::filesystem::recursive_directory_iterator(relibd_->dir())) {
    if (!entry.is_regular_file() || entry.path() == path) continue;
    EXPECT_THAT(entry.path().filename().string(), Not(HasSubstr("huge"))) << entry.path();
    EXPECT_LT(entry.file_size(), 1u << 20) << entry.path();
  }
  ExpectBystanderUntouched("oversized file");
}

}  // namespace
}  // namespace relib::testing
