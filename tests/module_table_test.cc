// relibd's module table on disk (daemon/module_table.h): what a restart reads
// back after a kill of relibd (the newest table, written before each change
// returns) and after a power loss (which can leave the newest table or its
// newest copies damaged or short: the durable table's entries stand in).
// Real files in a real directory; the damaged states are written by hand.
#include "daemon/module_table.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/temp_dir.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

v1::ModuleInfo Module(const std::string& name, uint64_t version, const std::string& path) {
  v1::ModuleInfo module;
  module.set_name(name);
  module.set_version(version);
  module.set_path(path);
  module.set_worker("default");
  return module;
}

class ModuleTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = common::TempDir::Create("/tmp", "relib-table-");
    ASSERT_TRUE(dir.ok());
    scratch_.emplace(std::move(dir).value());
    state_ = scratch_->path() + "/state";
    modules_ = state_ + "/modules";
    v1_ = scratch_->path() + "/v1.so";
    v2_ = scratch_->path() + "/v2.so";
    WriteFile(v1_, "\177ELF version one");
    WriteFile(v2_, "\177ELF version two, longer");
  }
  // One table file written by hand: `entries` as (name, version, copy file, recorded size).
  void WriteTable(const std::string& file, uint64_t generation,
                  const std::vector<std::tuple<std::string, uint64_t, std::string, uint64_t>>& entries) {
    v1::ModuleTable table;
    table.set_generation(generation);
    for (const auto& [name, version, copy, size] : entries) {
      auto* entry = table.add_entries();
      *entry->mutable_module() = Module(name, version, "/src/" + name + ".so");
      entry->set_copy(copy);
      entry->set_copy_size(size);
    }
    std::string bytes;
    table.SerializeToString(&bytes);
    std::filesystem::create_directories(modules_);
    WriteFile(modules_ + "/" + file, bytes);
  }
  v1::ModuleTable ReadTable(const std::string& file) {
    v1::ModuleTable table;
    EXPECT_TRUE(table.ParseFromString(ReadFile(modules_ + "/" + file))) << file;
    return table;
  }
  // The table file of the highest generation on disk (the durable one or a
  // newest one): what a restart would start from.
  // The newest-table files first: the persist thread writes table.pb before
  // it removes the ones it supersedes, so table.pb read last is at least as
  // new as any of them that went meanwhile.
  v1::ModuleTable NewestOnDisk() {
    v1::ModuleTable newest;
    for (const std::string& file : NextFiles()) {
      v1::ModuleTable next = ReadTable(file);
      if (next.generation() > newest.generation()) newest = next;
    }
    v1::ModuleTable durable = ReadTable("table.pb");
    return durable.generation() >= newest.generation() ? durable : newest;
  }
  // The newest-table files (table.next.<generation>.pb) by name.
  std::vector<std::string> NextFiles() {
    std::vector<std::string> files;
    for (const auto& file : std::filesystem::directory_iterator(modules_)) {
      const std::string name = file.path().filename().string();
      if (name.rfind("table.next.", 0) == 0) files.push_back(name);
    }
    std::sort(files.begin(), files.end());
    return files;
  }

  std::optional<common::TempDir> scratch_;
  std::string state_, modules_, v1_, v2_;
};

// Every change is on disk when it returns, and a new table reads it back
// (after a clean close here; a kill is the next test).
TEST_F(ModuleTableTest, EveryChangeIsReadBackByTheNextOpen) {
  {
    auto table = daemon::ModuleTable::Open(state_);
    ASSERT_THAT(table, IsOk());
    ASSERT_THAT((*table)->Put(Module("a", 1, v1_), v1_), IsOk());
    ASSERT_THAT((*table)->Put(Module("a", 2, v2_), v2_), IsOk());
    ASSERT_THAT((*table)->Put(Module("b", 1, v1_), v1_), IsOk());
    ASSERT_THAT((*table)->Remove("b"), IsOk());
    // On disk when Remove returned (as a newest table file, one per change,
    // or already in the durable table that supersedes them).
    v1::ModuleTable next = NewestOnDisk();
    EXPECT_EQ(next.generation(), 4u);
    ASSERT_EQ(next.entries_size(), 1);
    EXPECT_EQ(next.entries(0).module().version(), 2u);
    EXPECT_EQ(ReadFile(modules_ + "/" + next.entries(0).copy()), ReadFile(v2_));
  }
  auto table = daemon::ModuleTable::Open(state_);
  ASSERT_THAT(table, IsOk());
  auto entries = (*table)->Entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].module.name(), "a");
  EXPECT_EQ(entries[0].module.version(), 2u);
  EXPECT_EQ(ReadFile(entries[0].copy), ReadFile(v2_));
  // Made durable, and the copies no table names are gone.
  ASSERT_THAT((*table)->Flush(), IsOk());
  v1::ModuleTable durable = ReadTable("table.pb");
  ASSERT_EQ(durable.entries_size(), 1);
  EXPECT_EQ(durable.entries(0).module().version(), 2u);
  EXPECT_TRUE(NextFiles().empty());  // superseded by table.pb
  int copies = 0;
  for (const auto& file : std::filesystem::directory_iterator(modules_)) copies += file.path().extension() == ".so";
  EXPECT_EQ(copies, 1);
}

// A process killed right after a change returned (it ends with _exit: no
// destructor, no flush; the persist thread may or may not have run): the
// next Open reads that change back.
TEST_F(ModuleTableTest, ChangesSurviveAProcessEndedRightAfterThem) {
  for (int round = 0; round < 3; ++round) {
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      auto table = daemon::ModuleTable::Open(state_);
      if (!table.ok()) ::_exit(10);
      const uint64_t version = 2 * round + 2;
      if (!(*table)->Put(Module("a", version - 1, v1_), v1_).ok()) ::_exit(11);
      if (!(*table)->Put(Module("a", version, v2_), v2_).ok()) ::_exit(12);
      if (!(*table)->Put(Module("gone", 1, v1_), v1_).ok() || !(*table)->Remove("gone").ok()) ::_exit(13);
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    auto table = daemon::ModuleTable::Open(state_);
    ASSERT_THAT(table, IsOk());
    auto entries = (*table)->Entries();
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(entries[0].module.version(), uint64_t(2 * round + 2));
    EXPECT_EQ(ReadFile(entries[0].copy), ReadFile(v2_));
  }
}

// An entry whose copy is missing (kept so that its restore fails visibly)
// holds up neither the durable table nor the removal of old files.
TEST_F(ModuleTableTest, AMissingCopyDoesNotStopDurableWrites) {
  WriteTable("table.pb", 1, {{"lost", 1, "lost.v1.1.so", 100}});
  auto table = daemon::ModuleTable::Open(state_);
  ASSERT_THAT(table, IsOk());
  for (uint64_t version = 1; version <= 4; ++version) {
    ASSERT_THAT((*table)->Put(Module("a", version, version % 2 ? v1_ : v2_), version % 2 ? v1_ : v2_), IsOk());
  }
  ASSERT_THAT((*table)->Flush(), IsOk());
  v1::ModuleTable durable = ReadTable("table.pb");
  EXPECT_EQ(durable.generation(), 5u);
  EXPECT_EQ(durable.entries_size(), 2);
  EXPECT_TRUE(NextFiles().empty());
  int copies = 0;
  for (const auto& file : std::filesystem::directory_iterator(modules_)) copies += file.path().extension() == ".so";
  EXPECT_EQ(copies, 1);  // a's version 4 only
}

// A power loss before the newest copy reached the disk: the newest table
// names a copy that is short (or missing); the durable table's version of
// that module, whose copy is whole, is restored instead, and the other
// modules keep their newest entries.
TEST_F(ModuleTableTest, ShortNewestCopyFallsBackToTheDurableVersion) {
  const std::string one = ReadFile(v1_), two = ReadFile(v2_);
  WriteTable("table.pb", 4, {{"a", 1, "a.v1.3.so", one.size()}, {"b", 1, "b.v1.4.so", one.size()}});
  WriteTable("table.next.5.pb", 5, {{"a", 2, "a.v2.5.so", two.size()}, {"b", 1, "b.v1.4.so", one.size()}});
  WriteTable("table.next.6.pb", 6, {{"a", 2, "a.v2.5.so", two.size()}, {"b", 2, "b.v2.6.so", two.size()}});
  WriteFile(modules_ + "/a.v1.3.so", one);
  WriteFile(modules_ + "/b.v1.4.so", one);
  WriteFile(modules_ + "/a.v2.5.so", "");  // what a power loss can leave of a file never fsynced
  WriteFile(modules_ + "/b.v2.6.so", two);
  auto table = daemon::ModuleTable::Open(state_);
  ASSERT_THAT(table, IsOk());
  auto entries = (*table)->Entries();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].module.name(), "a");
  EXPECT_EQ(entries[0].module.version(), 1u);
  EXPECT_EQ(ReadFile(entries[0].copy), one);
  EXPECT_EQ(entries[1].module.name(), "b");
  EXPECT_EQ(entries[1].module.version(), 2u);
  EXPECT_EQ(ReadFile(entries[1].copy), two);
  // What was read is durable now; the short copy and b's old one are gone.
  v1::ModuleTable durable = ReadTable("table.pb");
  EXPECT_EQ(durable.generation(), 6u);
  ASSERT_EQ(durable.entries_size(), 2);
  EXPECT_EQ(durable.entries(0).copy(), "a.v1.3.so");
  EXPECT_FALSE(std::filesystem::exists(modules_ + "/a.v2.5.so"));
  EXPECT_FALSE(std::filesystem::exists(modules_ + "/b.v1.4.so"));
  EXPECT_TRUE(NextFiles().empty());
  // The next change continues the generations: it is never taken for older.
  ASSERT_THAT((*table)->Put(Module("a", 2, v2_), v2_), IsOk());
  EXPECT_EQ(NewestOnDisk().generation(), 7u);
}

// A newest table damaged or cut short (a power loss in its write: a prefix
// can parse, without the generation that comes last), or older than the
// durable one: the durable table is read.
TEST_F(ModuleTableTest, DamagedShortOrOlderNewestTablesArePassedOver) {
  const std::string one = ReadFile(v1_), two = ReadFile(v2_);
  std::filesystem::create_directories(modules_);
  WriteFile(modules_ + "/a.v2.2.so", two);
  WriteTable("table.pb", 2, {{"a", 2, "a.v2.2.so", two.size()}});
  WriteFile(modules_ + "/table.next.3.pb", "\x0a\xff\xff garbage");
  WriteTable("table.next.4.pb", 0, {{"a", 3, "a.v3.4.so", two.size()}});  // no generation: cut short
  WriteFile(modules_ + "/a.v3.4.so", two);
  {
    auto table = daemon::ModuleTable::Open(state_);
    ASSERT_THAT(table, IsOk());
    auto entries = (*table)->Entries();
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(entries[0].module.version(), 2u);
  }
  WriteTable("table.next.1.pb", 1, {{"a", 1, "a.v1.1.so", one.size()}});
  WriteFile(modules_ + "/a.v1.1.so", one);
  auto table = daemon::ModuleTable::Open(state_);
  ASSERT_THAT(table, IsOk());
  auto entries = (*table)->Entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].module.version(), 2u);
  EXPECT_EQ(ReadFile(entries[0].copy), two);
}

// Neither file readable: relibd must not start on a guess; the error names
// the file. A table of an earlier relibd (no generation, no sizes) reads.
TEST_F(ModuleTableTest, BothTablesDamagedIsDataLossAndOldTablesRead) {
  std::filesystem::create_directories(modules_);
  WriteFile(modules_ + "/table.pb", "\x0a\xff\xff garbage");
  WriteFile(modules_ + "/table.next.3.pb", "\x0a\xff\xff garbage");
  WriteFile(modules_ + "/a.v3.so", ReadFile(v1_));
  WriteFile(modules_ + "/table.pb.tmp", "half a table");
  EXPECT_THAT(daemon::ModuleTable::Open(state_),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr(modules_ + "/table.pb")));
  // A refused start changes nothing: the operator's evidence and the copies stay.
  EXPECT_EQ(ReadFile(modules_ + "/table.pb"), "\x0a\xff\xff garbage");
  EXPECT_EQ(ReadFile(modules_ + "/table.next.3.pb"), "\x0a\xff\xff garbage");
  EXPECT_EQ(ReadFile(modules_ + "/a.v3.so"), ReadFile(v1_));
  EXPECT_EQ(ReadFile(modules_ + "/table.pb.tmp"), "half a table");
  std::filesystem::remove(modules_ + "/table.next.3.pb");
  WriteTable("table.pb", 0, {{"a", 3, "a.v3.so", 0}});
  auto table = daemon::ModuleTable::Open(state_);
  ASSERT_THAT(table, IsOk());
  auto entries = (*table)->Entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].module.version(), 3u);
  EXPECT_EQ(ReadFile(entries[0].copy), ReadFile(v1_));
}

}  // namespace
}  // namespace relib::testing
