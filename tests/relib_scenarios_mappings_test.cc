// Ports of relib's test scenarios about mappings that outlive a module:
// backtraces (`backtrace_unloading`, and the cross-object part of
// `backtrace_unloading_host_as_dylib`) and changing code (`code_change`), plus
// the truthfulness of the "why is it still mapped" answer. Written fresh for
// relibd from relib's scenario descriptions; each test names the relib file
// it mirrors. Real relibd, real workers, effects read from /proc/<worker>.
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::Each;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

#ifdef RELIB_SANITIZED
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// How much the worker may grow between the first and the last cycle: what is
// left is allocator caches and the unwinder's bookkeeping, never a module's
// copy, its leaks or its symbolizer's data. Before file-backed mappings were
// tracked, the ten backtrace cycles below added 92 MB and 360 mappings.
constexpr uint64_t kRssSlackBytes = 8u << 20;
constexpr size_t kMappingSlack = 8;

struct Footprint {
  uint64_t rss = 0;
  size_t mappings = 0;
};

// Like relib's host, prints the worker's memory (and checks it, which relib
// leaves as a TODO).
void ExpectFlat(const Footprint& first, const Footprint& last) {
  std::cout << "worker RSS " << first.rss << " -> " << last.rss << " bytes, mappings " << first.mappings << " -> "
            << last.mappings << "\n";
  if (kSanitized) return;  // the sanitizer's quarantine inflates RSS
  EXPECT_LE(last.rss, first.rss + kRssSlackBytes) << "RSS " << first.rss << " -> " << last.rss;
  EXPECT_LE(last.mappings, first.mappings + kMappingSlack) << "mappings " << first.mappings << " -> " << last.mappings;
}

Footprint Measure(pid_t pid) {
  Footprint footprint;
  auto rss = common::ReadRssBytes(pid);
  auto mappings = common::ReadMappings(pid);
  EXPECT_THAT(rss, IsOk());
  EXPECT_THAT(mappings, IsOk());
  if (rss.ok()) footprint.rss = *rss;
  if (mappings.ok()) footprint.mappings = mappings->size();
  return footprint;
}

class RelibScenariosMappingsTest : public RelibdTest {
 protected:
  static v1::ModuleOptions RelibLikeOptions() {
    // relib frees leaks and unmaps every mapping a module made, always.
    v1::ModuleOptions options;
    options.set_leak_policy(v1::LEAK_POLICY_FREE);
    options.set_mapping_policy(v1::MAPPING_POLICY_UNMAP);
    return options;
  }
  // Unloads and checks the report says the copy is gone, with no reason.
  v1::UnloadReport UnloadAndExpectUnmapped(const std::string& name) {
    v1::UnloadResponse response;
    grpc::Status status = Unload(name, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    const v1::UnloadReport& report = response.report();
    EXPECT_TRUE(report.unmapped()) << report.DebugString();
    EXPECT_THAT(report.pin_reasons(), IsEmpty());
    EXPECT_THAT(report.remaining_mappings(), IsEmpty());
    return report;
  }
};

// Mirrors testing/host/src/backtrace_unloading.rs and
// testing/module/src/backtrace_unloading.rs: ten cycles of load, a call that
// symbolizes the module's own stack (its helper's name and file:line must
// appear), unload. Each unload must really unmap the module, the worker must
// not grow, and an innocent module in the same worker (whose file every
// backtrace also read) must unload cleanly with no reason given.
TEST_F(RelibScenariosMappingsTest, BacktraceUnloadingTenCycles) {
  pid_t worker = LoadOrDie("innocent", k_versioned_v1);
  Footprint first;
  for (int cycle = 1; cycle <= 10; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    EXPECT_EQ(LoadOrDie("bt", k_backtrace, RelibLikeOptions()), worker);
    std::string frames = Call("bt", "trace");
    EXPECT_THAT(frames, AllOf(HasSubstr("relib_backtrace_testcase_probe "), HasSubstr("backtrace.cc:")));
    v1::UnloadReport report = UnloadAndExpectUnmapped("bt");
    // The symbolizer's file views were listed with their files and unmapped.
    EXPECT_TRUE(report.mappings_unmapped());
    EXPECT_THAT(report.mappings(), Contains(::testing::Property(&v1::MappingReport::path, HasSubstr("/innocent.v"))));
    EXPECT_THAT(ModuleMappings(worker, "/bt.v"), IsEmpty());
    if (cycle == 1) first = Measure(worker);
  }
  Footprint last = Measure(worker);
  ExpectFlat(first, last);
  EXPECT_EQ(Call("innocent", "version"), "v1");
  UnloadAndExpectUnmapped("innocent");
  EXPECT_THAT(ModuleMappings(worker), IsEmpty());
}

// The worker's mappings of `path` (compared without symlinks).
std::vector<std::string> MappingsOfFile(pid_t pid, const std::string& path) {
  std::vector<std::string> found;
  auto mappings = common::ReadMappings(pid);
  EXPECT_THAT(mappings, IsOk());
  if (!mappings.ok()) return found;
  const std::string wanted = std::filesystem::weakly_canonical(path).string();
  for (const auto& m : *mappings) {
    if (m.path == wanted || m.path == path) found.push_back(m.line);
  }
  return found;
}

// Mirrors testing/runner/src/backtrace_unloading_host_as_dylib.rs,
// testing/host/src/backtrace_unloading_host_as_dylib.rs,
// testing/host_as_dylib/src/lib.rs and
// testing/module/src/backtrace_unloading_host_as_dylib.rs. Only the
// cross-object backtrace part is mirrored: relibd's agent always lives in the
// relib-worker executable, so relib's "host as a dylib" has no counterpart.
// In its place the module links (DT_NEEDED) a helper library that CMake
// builds into a directory of its own (found through the module's absolute
// RUNPATH; the module itself runs from relibd's scratch copy). The helper's
// export calls back into the module, which symbolizes its stack there: the
// frames name the module's probe (file:line from the copy's debug info) and,
// outside it, the helper's trampoline. Five cycles under relib's policies:
// each unload really unmaps the module, and the helper, held by nothing but
// the module, goes with it (glibc unmaps a DT_NEEDED dependency when its last
// reference is dropped); the worker stays flat. Then one cycle under the
// default report policy, where what remains of the helper's file is told.
TEST_F(RelibScenariosMappingsTest, BacktraceAcrossLinkedHelperLibraryFiveCycles) {
  const std::string helper = k_bt_helper;
  ASSERT_THAT(helper, Not(StartsWith(relibd_->dir())));
  pid_t worker = LoadOrDie("innocent", k_versioned_v1);
  EXPECT_THAT(MappingsOfFile(worker, helper), IsEmpty());
  Footprint first;
  for (int cycle = 1; cycle <= 5; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    EXPECT_EQ(LoadOrDie("across", k_backtrace_across, RelibLikeOptions()), worker);
    // glibc loaded the dependency from the helper's own directory.
    EXPECT_THAT(MappingsOfFile(worker, helper), Not(IsEmpty()));
    std::string frames = Call("across", "trace");
    EXPECT_THAT(frames, AllOf(HasSubstr("relib_bt_across_module_probe "), HasSubstr("backtrace_across.cc:"),
                              HasSubstr("relib_bt_helper_unique_trampoline "), HasSubstr("backtrace_helper.c:")));
    // Innermost first: the module's probe runs inside the helper's frame.
    EXPECT_LT(frames.find("relib_bt_across_module_probe "), frames.find("relib_bt_helper_unique_trampoline "));
    v1::UnloadReport report = UnloadAndExpectUnmapped("across");
    // The symbolizer's views of the helper's file were listed and unmapped.
    EXPECT_TRUE(report.mappings_unmapped());
    EXPECT_THAT(report.mappings(),
                Contains(::testing::Property(&v1::MappingReport::path, HasSubstr("libtestcase_bt_helper.so"))));
    // A DT_NEEDED dependency is not a dlopen of the module's: nothing to report
    // there. glibc dropped its last reference with the module and unmapped it.
    EXPECT_THAT(report.libraries(), IsEmpty());
    EXPECT_THAT(MappingsOfFile(worker, helper), IsEmpty());
    EXPECT_THAT(ModuleMappings(worker, "/across.v"), IsEmpty());
    if (cycle == 1) first = Measure(worker);
  }
  Footprint last = Measure(worker);
  ExpectFlat(first, last);
  // Under the default report policy the symbolizer's views of the helper's
  // file stay (it is an ordinary file, not a module's) and are listed; the
  // library itself is still gone: whatever of its file the worker still maps
  // is a view the report names, and none of it is code.
  LoadOrDie("across", k_backtrace_across);
  EXPECT_THAT(MappingsOfFile(worker, helper), Contains(HasSubstr(" r-xp ")));
  EXPECT_THAT(Call("across", "trace"), HasSubstr("relib_bt_helper_unique_trampoline "));
  v1::UnloadReport report = UnloadAndExpectUnmapped("across");
  std::set<uint64_t> listed;
  for (const auto& m : report.mappings()) {
    if (m.path().find("libtestcase_bt_helper.so") != std::string::npos) listed.insert(m.address());
  }
  EXPECT_THAT(listed, Not(IsEmpty())) << report.DebugString();
  for (const std::string& line : MappingsOfFile(worker, helper)) {
    EXPECT_EQ(listed.count(std::stoull(line, nullptr, 16)), 1u) << line << "\nis not in the report:\n"
                                                                << report.DebugString();
    EXPECT_THAT(line, Not(HasSubstr(" r-xp ")));
  }
  EXPECT_EQ(Call("innocent", "version"), "v1");
  UnloadAndExpectUnmapped("innocent");
  EXPECT_THAT(ModuleMappings(worker), IsEmpty());
}

// The report policy keeps what a module mapped of ordinary files, but never
// its views of module files (its own copy and other modules' copies): those
// are its private reads, and they would keep a module mapped that nobody uses.
TEST_F(RelibScenariosMappingsTest, ViewsOfModuleFilesAreUnmappedEvenUnderReportPolicy) {
  pid_t worker = LoadOrDie("innocent", k_versioned_v1);
  const size_t segments = ModuleMappings(worker, "/innocent.v").size();
  for (int cycle = 1; cycle <= 3; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    LoadOrDie("bt", k_backtrace);
    EXPECT_THAT(Call("bt", "trace"), HasSubstr("relib_backtrace_testcase_probe "));
    v1::UnloadReport report = UnloadAndExpectUnmapped("bt");
    EXPECT_FALSE(report.mappings_unmapped());
    bool lists_libc = false;
    for (const auto& m : report.mappings()) lists_libc = lists_libc || m.path().find("libc.so") != std::string::npos;
    EXPECT_TRUE(lists_libc) << report.DebugString();
  }
  // relibctl shows each mapping with its file.
  LoadOrDie("bt", k_backtrace);
  EXPECT_THAT(Call("bt", "trace"), HasSubstr("relib_backtrace_testcase_probe "));
  CommandResult unload = relibd_->Ctl({"unload", "bt"});
  ASSERT_EQ(unload.exit_code, 0) << unload.err;
  EXPECT_THAT(unload.out, AllOf(HasSubstr("unmapped: yes"),
                                HasSubstr("(views of module files unmapped, the others kept)"), HasSubstr("anonymous"),
                                HasSubstr("libc.so")));
  // Only the innocent module's own segments map a module file, as before.
  EXPECT_THAT(ModuleMappings(worker), Each(HasSubstr("/innocent.v")));
  EXPECT_EQ(ModuleMappings(worker, "/innocent.v").size(), segments);
  UnloadAndExpectUnmapped("innocent");
}

// Every pin reason is true: a module whose file another module still has
// mapped says so and names that module, not a dlopen that never happened;
// when that module unloads, the last mapping of the file goes with it.
TEST_F(RelibScenariosMappingsTest, FileMappedByAnotherModuleIsAttributedToIt) {
  pid_t worker = LoadOrDie("innocent", k_versioned_v1);
  LoadOrDie("bt", k_backtrace);
  EXPECT_THAT(Call("bt", "trace"), HasSubstr("relib_backtrace_testcase_probe "));
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("innocent", &response).ok());
  const v1::UnloadReport& report = response.report();
  EXPECT_FALSE(report.unmapped());
  EXPECT_THAT(report.pin_reasons(), Contains(AllOf(HasSubstr("file-backed mmap"), HasSubstr("module 'bt'"))));
  EXPECT_THAT(report.pin_reasons(), Each(Not(HasSubstr("dlopen"))));
  EXPECT_THAT(report.pin_reasons(), Each(Not(HasSubstr("another reference"))));
  EXPECT_FALSE(report.remaining_mappings().empty());
  // bt still runs (its symbolizer still reads the views) ...
  EXPECT_THAT(Call("bt", "trace"), HasSubstr("relib_backtrace_testcase_probe "));
  // ... and takes them along when it goes.
  UnloadAndExpectUnmapped("bt");
  EXPECT_THAT(ModuleMappings(worker), IsEmpty());
}

// Copies `variant` over `path` the way a compiler overwrites its output.
void Overwrite(const char* variant, const std::string& path) {
  std::filesystem::copy_file(variant, path, std::filesystem::copy_options::overwrite_existing);
}

struct Build {
  const char* file;
  int cycles;
  std::string answer;  // what `main` of this build returns
};

std::vector<Build> CodeChangeBuilds() {
  return {
      {k_code_change_v1, 1, "v1"},
      {k_code_change_v2, 1, "v2"},
      {k_code_change_v3, 1, "v3 leaked 209715200"},
      {k_code_change_v4, 10, "v4 leaked 209715200 backtrace"},
      {k_code_change_v5, 10, "v5 leaked 209715200 backtrace backtrace"},
  };
}

// Checks one unload report of a code_change build; `build` is its index.
void ExpectCleanCodeChangeUnload(const v1::UnloadReport& report, size_t build) {
  EXPECT_TRUE(report.unmapped()) << report.DebugString();
  EXPECT_THAT(report.pin_reasons(), IsEmpty());
  if (build >= 2 && report.heap().tracking_enabled()) {
    EXPECT_GE(report.heap().leaked_bytes(), 200 << 20);
    EXPECT_TRUE(report.heap().freed());
  }
  if (build >= 3) {
    EXPECT_TRUE(report.mappings_unmapped());  // the symbolizer's views and memory
  }
}

// Mirrors testing/host/src/code_change.rs, testing/module/src/code_change.rs
// and testing/runner/src/code_change.rs: five builds of one module copied in
// turn over one path, 1+1+1+10+10 cycles of load, `main`, unload, with 200 MiB
// leaks (freed by policy, as relib always does) and backtraces. Every old
// version is unmapped, each build's behaviour is seen right after its load,
// and the worker's memory stays flat.
TEST_F(RelibScenariosMappingsTest, CodeChangeLoadCallUnloadAcrossFiveBuilds) {
  const std::string path = relibd_->dir() + "/libcode_change.so";
  pid_t worker = LoadOrDie("anchor", k_versioned_v1);  // keeps the worker and sees its file read
  std::vector<Build> builds = CodeChangeBuilds();
  Footprint first;
  int cycle = 0;
  for (size_t b = 0; b < builds.size(); ++b) {
    Overwrite(builds[b].file, path);
    for (int i = 0; i < builds[b].cycles; ++i) {
      SCOPED_TRACE("build v" + std::to_string(b + 1) + " cycle " + std::to_string(++cycle));
      EXPECT_EQ(LoadOrDie("cc", path, RelibLikeOptions()), worker);
      EXPECT_EQ(Call("cc", "main"), builds[b].answer);
      v1::UnloadResponse response;
      ASSERT_TRUE(Unload("cc", &response).ok());
      ExpectCleanCodeChangeUnload(response.report(), b);
      if (cycle == 1) first = Measure(worker);
    }
  }
  EXPECT_EQ(cycle, 23);
  Footprint last = Measure(worker);
  ExpectFlat(first, last);
  EXPECT_THAT(ModuleMappings(worker, "/cc.v"), IsEmpty());
  // before_unload ran for v2..v5 (relib's runner looks for its line).
  for (int version = 2; version <= 5; ++version) {
    EXPECT_THAT(relibd_->Log(), HasSubstr("[module] before_unload v" + std::to_string(version)));
  }
  UnloadAndExpectUnmapped("anchor");
}

// The same scenario the way relibd is used: one load, then `reload` after
// every overwrite (22 reloads, then the last unload).
TEST_F(RelibScenariosMappingsTest, CodeChangeReloadAcrossFiveBuilds) {
  const std::string path = relibd_->dir() + "/libcode_change.so";
  std::vector<Build> builds = CodeChangeBuilds();
  Overwrite(builds[0].file, path);
  pid_t worker = LoadOrDie("cc", path, RelibLikeOptions());
  EXPECT_EQ(Call("cc", "main"), builds[0].answer);
  Footprint first = Measure(worker);
  int reports = 0;
  size_t previous = 0;
  for (size_t b = 0; b < builds.size(); ++b) {
    Overwrite(builds[b].file, path);
    for (int i = b == 0 ? 1 : 0; i < builds[b].cycles; ++i) {
      SCOPED_TRACE("build v" + std::to_string(b + 1) + " reload " + std::to_string(reports + 1));
      v1::ReloadResponse response;
      grpc::Status status = Reload("cc", path, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(response.module().worker_pid(), worker);
      ExpectCleanCodeChangeUnload(response.report(), previous);
      ++reports;
      previous = b;
      EXPECT_EQ(Call("cc", "main"), builds[b].answer);
    }
  }
  v1::UnloadResponse response;
  ASSERT_TRUE(Unload("cc", &response).ok());
  ExpectCleanCodeChangeUnload(response.report(), previous);
  EXPECT_EQ(++reports, 23);
  Footprint last = Measure(worker);
  ExpectFlat(first, last);
  EXPECT_THAT(ModuleMappings(worker, "/cc.v"), IsEmpty());
  for (int version = 2; version <= 5; ++version) {
    EXPECT_THAT(relibd_->Log(), HasSubstr("[module] before_unload v" + std::to_string(version)));
  }
}

}  // namespace
}  // namespace relib::testing
