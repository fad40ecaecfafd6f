// examples/editor-client (Node.js, @grpc/grpc-js) against a real relibd: it
// follows Events, reloads on request and prints the unload report. Skipped
// with a message where node or npm is missing (scripts/install-deps installs
// them); its npm dependencies are installed from package-lock.json once per
// build tree.
#include <fcntl.h>
#include <sys/file.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/unique_fd.h"
#include "tests/relibd_process.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

bool OnPath(const std::string& program) {
  return RunCommand({"/bin/sh", "-c", "command -v " + program}).exit_code == 0;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The example copied into the build tree with its dependencies installed
// (again only when package-lock.json changed).
absl::StatusOr<fs::path> PreparedClient() {
  const fs::path source = fs::path(kSourceDir) / "examples/editor-client";
  const fs::path target = fs::path(kBuildDir) / "editor-client";
  fs::create_directories(target);
  // Tests run in parallel: one npm ci at a time in this directory.
  common::UniqueFd lock(::open((target / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock.valid() || ::flock(lock.get(), LOCK_EX) != 0) return absl::InternalError("cannot lock " + target.string());
  bool fresh = ReadFile(source / "package-lock.json") == ReadFile(target / "package-lock.json") &&
               fs::exists(target / "node_modules/@grpc/grpc-js");
  for (const char* file : {"package.json", "package-lock.json", "client.js"}) {
    fs::copy_file(source / file, target / file, fs::copy_options::overwrite_existing);
  }
  if (!fresh) {
    CommandResult r = RunCommand({"/bin/sh", "-c",
                                  "cd " + target.string() + " && npm ci --no-audit --no-fund --ignore-scripts 2>&1"});
    if (r.exit_code != 0) return absl::UnavailableError("npm ci failed: " + r.out + r.err);
  }
  return target;
}

TEST(EditorClientTest, FollowsEventsReloadsAndPrintsTheReport) {
  if (!OnPath("node") || !OnPath("npm")) GTEST_SKIP() << "node or npm not installed (scripts/install-deps installs them)";
  auto client = PreparedClient();
  ASSERT_THAT(client, IsOk());
  auto relibd = RelibdProcess::Start();
  ASSERT_THAT(relibd, IsOk());
  ASSERT_EQ((*relibd)->Ctl({"load", "hello", kHelloPath}).exit_code, 0);

  CommandResult r = RunCommand({"/usr/bin/env", "node", (*client / "client.js").string(), "--socket", (*relibd)->socket(), "--proto",
                                std::string(kSourceDir) + "/proto"},
                               "reload hello\nreload ghost\n");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << (*relibd)->Log();
  EXPECT_THAT(r.out, HasSubstr("{\"type\":\"ready\"}"));
  // The report of version 1, as the editor shows it.
  EXPECT_THAT(r.out, AllOf(HasSubstr("\"type\":\"reloaded\",\"module\":\"hello\",\"version\":\"2\",\"unmapped\":true"),
                           HasSubstr("\"before_unload_micros\"")));
  EXPECT_THAT(r.out, HasSubstr("\"type\":\"event\",\"kind\":\"EVENT_KIND_RELOADED\",\"module\":\"hello\",\"version\":\"2\""));
  EXPECT_THAT(r.out, AllOf(HasSubstr("\"request\":\"reload ghost\",\"code\":\"NOT_FOUND\""),
                           HasSubstr("no module named 'ghost'")));
  // relibd really swapped it.
  EXPECT_EQ((*relibd)->Ctl({"call", "hello", "greet", "editor"}).out, "Hello, editor!");
}

TEST(EditorClientTest, UnreachableDaemonExitsOne) {
  if (!OnPath("node") || !OnPath("npm")) GTEST_SKIP() << "node or npm not installed (scripts/install-deps installs them)";
  auto client = PreparedClient();
  ASSERT_THAT(client, IsOk());
  CommandResult r = RunCommand({"/usr/bin/env", "node", (*client / "client.js").string(), "--socket", "/nonexistent/relibd.sock",
                                "--proto", std::string(kSourceDir) + "/proto"},
                               "status\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("cannot reach relibd at /nonexistent/relibd.sock"));
}

}  // namespace
}  // namespace relib::testing
