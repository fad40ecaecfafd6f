// The /proc/PID/maps parser: every field of real and unusual lines, and the
// single-file query the unload check uses agrees with the full parse.
#include "common/proc_maps.h"

#include <dlfcn.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::common {
namespace {

using ::relib::testing::IsOk;
using ::testing::SizeIs;

TEST(ProcMapsParseTest, ReadsEveryField) {
  auto mappings = ParseMappings(
      "55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1234567                    /usr/bin/relib worker\n"
      "7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 \n"
      "7ffd1a2b3000-7ffd1a2d4000 rw-p 00000000 00:00 0                          [stack]\n"
      "7f1e2d400000-7f1e2d401000 r-xp 0001a000 08:02 42                         /tmp/w/m.v1.0.so (deleted)\n"
      "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0");
  ASSERT_THAT(mappings, SizeIs(5));
  const Mapping& exe = mappings[0];
  EXPECT_EQ(exe.start, 0x55d0c8a00000u);
  EXPECT_EQ(exe.end, 0x55d0c8a02000u);
  EXPECT_EQ(exe.perms, "r--p");
  EXPECT_EQ(exe.offset, 0u);
  EXPECT_EQ(exe.inode, 1234567u);
  EXPECT_EQ(exe.path, "/usr/bin/relib worker") << "paths may contain spaces";
  EXPECT_EQ(exe.line.substr(0, 25), "55d0c8a00000-55d0c8a02000");
  EXPECT_EQ(mappings[1].path, "");
  EXPECT_EQ(mappings[1].inode, 0u);
  EXPECT_EQ(mappings[2].path, "[stack]");
  EXPECT_EQ(mappings[3].offset, 0x1a000u);
  EXPECT_EQ(mappings[3].perms, "r-xp");
  EXPECT_EQ(mappings[3].path, "/tmp/w/m.v1.0.so (deleted)");
  EXPECT_EQ(mappings[4].start, 0xffffffffff600000u) << "last line without a newline";
  EXPECT_EQ(mappings[4].path, "");
  EXPECT_THAT(MappingsOfFile(mappings, "/tmp/w/m.v1.0.so"), SizeIs(1));
}

TEST(ProcMapsParseTest, SingleFileQueryAgreesWithTheFullParse) {
  void* handle = ::dlopen(testing::k_versioned_v1, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << ::dlerror();
  auto all = ReadMappings(0);
  auto one = ReadMappingsOfFile(0, testing::k_versioned_v1);
  ASSERT_THAT(all, IsOk());
  ASSERT_THAT(one, IsOk());
  auto expected = MappingsOfFile(*all, testing::k_versioned_v1);
  ASSERT_GE(expected.size(), 2u);
  ASSERT_EQ(one->size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ((*one)[i].line, expected[i].line);
    EXPECT_EQ((*one)[i].start, expected[i].start);
    EXPECT_EQ((*one)[i].perms, expected[i].perms);
  }
  ::dlclose(handle);
  EXPECT_THAT(ReadMappingsOfFile(999999999, "/x"), testing::StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace relib::common
