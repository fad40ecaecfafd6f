// What a user and a script expect of relibctl and relibd's command lines:
// versions, help per command, JSON errors, a timeout on every request,
// timestamped events, reload --all, usage errors, and bash completion.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "tests/relibd_fixture.h"
#include "tests/test_paths.h"
#include "tests/testing.h"
#include "relib/module.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A real relibd per test (RelibdTest: started in SetUp, its log printed on failure).
class RelibctlUxTest : public RelibdTest {};

// The one JSON object relibctl prints for an error.
google::protobuf::Struct ParseJson(const std::string& text) {
  google::protobuf::Struct parsed;
  auto status = google::protobuf::util::JsonStringToMessage(text, &parsed);
  EXPECT_TRUE(status.ok()) << "not one JSON object: " << text;
  return parsed;
}

TEST_F(RelibctlUxTest, VersionNamesClientDaemonAndAbi) {
  CommandResult r = relibd_->Ctl({"version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr(std::string("relibctl ") + RELIB_VERSION),
                           HasSubstr(absl::StrCat("relibd ", RELIB_VERSION, " (pid ", relibd_->process().pid())),
                           HasSubstr(absl::StrCat("module ABI ", RELIB_ABI_VERSION))));

  r = relibd_->Ctl({"version", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto json = ParseJson(r.out);
  EXPECT_EQ(json.fields().at("relibd").string_value(), RELIB_VERSION);
  EXPECT_EQ(json.fields().at("relibd_pid").number_value(), relibd_->process().pid());

  // Without a daemon: relibctl's own version still shows, and the exit code says unreachable.
  r = RunCommand({kRelibctlPath, "--socket", relibd_->dir() + "/nobody.sock", "--connect-timeout-ms", "200", "version"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.out, HasSubstr(std::string("relibctl ") + RELIB_VERSION));
  EXPECT_THAT(r.err, HasSubstr("cannot reach relibd"));

  r = RunCommand({kRelibdPath, "--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr(std::string("relibd ") + RELIB_VERSION));
}

TEST_F(RelibctlUxTest, HelpForOneCommand) {
  CommandResult r = relibd_->Ctl({"help", "reload"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("--force"), HasSubstr("--all"), HasSubstr("--staged")));
  r = relibd_->Ctl({"help"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("load"), HasSubstr("events"), HasSubstr("version")));
  r = relibd_->Ctl({"help", "nosuch"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("no command 'nosuch'"));
}

TEST_F(RelibctlUxTest, ErrorsAreJsonUnderJson) {
  CommandResult r = relibd_->Ctl({"--json", "call", "ghost", "greet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  auto json = ParseJson(r.err);
  EXPECT_THAT(json.fields().at("error").string_value(), HasSubstr("no module named 'ghost'"));
  EXPECT_EQ(json.fields().at("code").string_value(), "NOT_FOUND");
  EXPECT_EQ(json.fields().at("exit_code").number_value(), 1);

  r = RunCommand({kRelibctlPath, "--json", "--socket", relibd_->dir() + "/nobody.sock", "--connect-timeout-ms",
                  "200", "status"});
  EXPECT_EQ(r.exit_code, 3);
  json = ParseJson(r.err);
  EXPECT_EQ(json.fields().at("code").string_value(), "UNAVAILABLE");
  EXPECT_THAT(json.fields().at("error").string_value(), HasSubstr("cannot reach relibd"));

  r = relibd_->Ctl({"--json", "load", "only-a-name"});
  EXPECT_EQ(r.exit_code, 2);
  json = ParseJson(r.err);
  EXPECT_EQ(json.fields().at("code").string_value(), "USAGE");
  EXPECT_THAT(json.fields().at("error").string_value(), HasSubstr("PATH"));
}

TEST_F(RelibctlUxTest, TimeoutBoundsEveryRequest) {
  ASSERT_EQ(relibd_->Ctl({"load", "v", k_versioned_v1}).exit_code, 0);
  auto start = std::chrono::steady_clock::now();
  CommandResult r = relibd_->Ctl({"--timeout", "0.5", "call", "v", "hang"});
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("no answer within --timeout 0.5 s"), HasSubstr("[DEADLINE_EXCEEDED]")));
  EXPECT_LT(took, std::chrono::seconds(5));

  // For events, --timeout is how long to follow: reaching it is a normal end.
  r = relibd_->Ctl({"events", "--timeout", "0.3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(RelibctlUxTest, EventsCarryTimestamps) {
  std::atomic<bool> done{false};
  // The stream only shows events from its start on: keep loading until one is seen.
  std::thread loader([&] {
    for (int i = 0; !done && i < 100; ++i) {
      relibd_->Ctl({"load", "h" + std::to_string(i), kHelloPath});
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  CommandResult r = relibd_->Ctl({"events", "--count", "1"});
  done = true;
  loader.join();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} #\d+ )"))) << r.out;
}

TEST_F(RelibctlUxTest, ReloadAllReloadsEveryModule) {
  ASSERT_EQ(relibd_->Ctl({"load", "hello", kHelloPath}).exit_code, 0);
  ASSERT_EQ(relibd_->Ctl({"load", "v", k_versioned_v1}).exit_code, 0);
  CommandResult r = relibd_->Ctl({"reload", "--all"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("reloaded module hello version 2"), HasSubstr("reloaded module v version 2")));

  EXPECT_EQ(relibd_->Ctl({"reload"}).exit_code, 2);
  EXPECT_EQ(relibd_->Ctl({"reload", "--all", "hello"}).exit_code, 2);
}

TEST_F(RelibctlUxTest, RelibdUsageErrorsExitTwo) {
  CommandResult r = RunCommand({kRelibdPath, "--no-such-flag"});
  EXPECT_EQ(r.exit_code, 2);
  r = RunCommand({kRelibdPath, "--call-deadline-ms", "soon"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(RelibctlUxTest, BashCompletionOffersCommandsAndModules) {
  ASSERT_EQ(relibd_->Ctl({"load", "hello", kHelloPath}).exit_code, 0);
  const std::string script = std::string(kSourceDir) + "/client/completion/relibctl.bash";
  const std::string bin = std::filesystem::path(kRelibctlPath).parent_path().string();
  auto complete = [&](const std::string& words, int cword) {
    return RunCommand({"/bin/bash", "-c",
                       "PATH=" + bin + ":$PATH; source " + script + "; COMP_WORDS=(" + words +
                           "); COMP_CWORD=" + std::to_string(cword) + "; _relibctl; echo \"${COMPREPLY[*]}\""});
  };
  CommandResult r = complete("relibctl re", 1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "reload reload-config\n");
  r = complete("relibctl --socket " + relibd_->socket() + " unload he", 4);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\n");
  r = complete("relibctl reload --a", 2);
  EXPECT_EQ(r.out, "--all\n");
}

}  // namespace
}  // namespace relib::testing
