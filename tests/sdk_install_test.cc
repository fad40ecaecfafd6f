// The installed SDK as a module author outside relibd's tree meets it:
// `cmake --install` into a prefix, the prefix moved elsewhere (everything
// must be relative), a module built with find_package(relib) and another
// with pkg-config only, both loaded and called through the installed relibd
// and relibctl.
#include <cstdlib>
#include <filesystem>

#include "common/temp_dir.h"
#include "tests/relibd_process.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

CommandResult Shell(const std::string& script) { return RunCommand({"/bin/sh", "-c", script}); }

TEST(SdkInstallTest, OutOfTreeModulesBuildAndRunAgainstAMovedInstall) {
  auto dir = common::TempDir::Create("/tmp", "relib-sdk-");
  ASSERT_THAT(dir, IsOk());
  const std::string installed = dir->path() + "/installed";
  const std::string moved = dir->path() + "/moved";

  CommandResult r = RunCommand({"/usr/bin/env", "cmake", "--install", kBuildDir, "--prefix", installed});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  fs::rename(installed, moved);

  for (const char* file : {"bin/relibd", "bin/relib-worker", "bin/relibctl", "include/relib/module.h",
                           "include/relib/module.hpp", "share/relib/proto/relib/v1/relibd.proto",
                           "share/bash-completion/completions/relibctl"}) {
    EXPECT_TRUE(fs::exists(moved + "/" + file)) << file;
  }

  // CMake: find_package(relib) + relib_add_module, nothing else.
  const std::string build = dir->path() + "/consumer";
  r = RunCommand({"/usr/bin/env", "cmake", "-S", std::string(kSourceDir) + "/tests/sdk", "-B", build, "-G", "Ninja",
                  "-DCMAKE_PREFIX_PATH=" + moved});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  r = RunCommand({"/usr/bin/env", "cmake", "--build", build});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string cmake_module = build + "/libgreeter.so";
  ASSERT_TRUE(fs::exists(cmake_module));

  // pkg-config: a C module compiled by hand.
  const std::string c_module = dir->path() + "/libgreeter_c.so";
  fs::path libdir;
  for (const auto& entry : fs::recursive_directory_iterator(moved)) {
    if (entry.path().filename() == "relib.pc") libdir = entry.path().parent_path();
  }
  ASSERT_FALSE(libdir.empty()) << "no relib.pc installed";
  r = Shell("PKG_CONFIG_PATH=" + libdir.string() + " && export PKG_CONFIG_PATH && cc -shared -fPIC -o " + c_module +
            " " + kSourceDir + "/tests/sdk/greeter.c $(pkg-config --cflags --libs relib)");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;

  auto relibd = RelibdProcess::Start({"--worker", moved + "/bin/relib-worker", "--allow-module-dir", dir->path()},
                                     true, moved + "/bin/relibd");
  ASSERT_THAT(relibd, IsOk());
  const std::string ctl = moved + "/bin/relibctl";
  const std::string socket = (*relibd)->socket();
  r = RunCommand({ctl, "--socket", socket, "load", "greeter", cmake_module});
  ASSERT_EQ(r.exit_code, 0) << r.err << (*relibd)->Log();
  r = RunCommand({ctl, "--socket", socket, "call", "greeter", "greet", "you"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "installed SDK greets you");
  r = RunCommand({ctl, "--socket", socket, "load", "greeter-c", c_module});
  ASSERT_EQ(r.exit_code, 0) << r.err << (*relibd)->Log();
  r = RunCommand({ctl, "--socket", socket, "call", "greeter-c", "greet", "C"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "pkg-config greets C");
  r = RunCommand({ctl, "--socket", socket, "unload", "greeter"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("unmapped: yes"));
}

}  // namespace
}  // namespace relib::testing
