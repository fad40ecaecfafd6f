// relibd --config FILE with real daemons: the file's modules and settings at
// start, flags over the file, bad files refused (exit 2, FILE:LINE), and
// reloads of the file on SIGHUP and `relibctl reload-config` that apply only
// the difference.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/event_log.h"
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

class ConfigTest : public RelibdTest {
 protected:
  void SetUp() override {
    auto dir = common::TempDir::Create("/tmp", "relib-config-test-");
    ASSERT_THAT(dir, IsOk());
    files_.emplace(std::move(dir).value());
    config_ = files_->path() + "/relibd.toml";
  }
  // Writes the config file; @V1@ and @V2@ stand for the two builds of the
  // versioned test module.
  void WriteConfig(const std::string& text) {
    std::string expanded = absl::StrReplaceAll(text, {{"@V1@", k_versioned_v1}, {"@V2@", k_versioned_v2}});
    std::ofstream(config_ + ".tmp") << expanded;
    fs::rename(config_ + ".tmp", config_);
  }
  void StartWithConfig(std::vector<std::string> args = {}) {
    args.insert(args.begin(), {"--config", config_});
    StartDaemon(args);
  }
  // Waits (up to 10 s) until `done(status)` holds.
  template <typename Predicate>
  bool WaitFor(Predicate done) {
    for (int i = 0; i < 400; ++i) {
      if (done(Status())) return true;
      std::this_thread::sleep_for(25ms);
    }
    return false;
  }
  // Waits until every module in `names` is loaded.
  bool WaitForLoaded(const std::vector<std::string>& names) {
    return WaitFor([&](const v1::StatusResponse& s) {
      for (const std::string& name : names) {
        const v1::ModuleInfo* module = FindModule(s, name);
        if (!module || module->state() != v1::MODULE_STATE_LOADED) return false;
      }
      return true;
    });
  }
  // Starts relibd expecting it to refuse to start; returns how it ended.
  CommandResult StartRefused(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {kRelibdPath, "--config", config_, "--socket", files_->path() + "/s.sock",
                                     "--worker", kWorkerPath};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv);
  }

  std::optional<common::TempDir> files_;
  std::string config_;
};

TEST_F(ConfigTest, ModulesAndDefaultsFromTheFileApplyAtStart) {
  WriteConfig(R"(
[defaults]
call_deadline_ms = 400
leak_policy = "free"

[modules.first]
path = "@V1@"

[modules.second]
path = "@V2@"
group = "other"
watch = true

[modules.broken]
path = "/nonexistent/libmissing.so"
)");
  ASSERT_NO_FATAL_FAILURE(StartWithConfig());
  ASSERT_TRUE(WaitForLoaded({"first", "second"})) << relibd_->Log();
  EXPECT_EQ(Call("first", "version"), "v1");
  EXPECT_EQ(Call("second", "version"), "v2");
  v1::StatusResponse status = Status();
  const v1::ModuleInfo* first = FindModule(status, "first");
  const v1::ModuleInfo* second = FindModule(status, "second");
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->source(), v1::MODULE_SOURCE_CONFIG);
  EXPECT_EQ(first->options().leak_policy(), v1::LEAK_POLICY_FREE);  // from [defaults]
  EXPECT_EQ(second->worker(), "other");
  EXPECT_TRUE(second->watch());
  EXPECT_NE(first->worker_pid(), second->worker_pid());
  // A module that cannot load is reported and left out; relibd keeps running.
  EXPECT_EQ(FindModule(status, "broken"), nullptr);
  EXPECT_THAT(relibd_->Log(), AllOf(HasSubstr("broken"), HasSubstr("libmissing.so")));

  // [defaults] call_deadline_ms is relibd's default call deadline.
  auto started = std::chrono::steady_clock::now();
  grpc::Status call;
  Call("first", "hang", "", &call);
  EXPECT_EQ(call.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << call.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);

  CommandResult r = relibd_->Ctl({"status"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("SOURCE"), HasSubstr("config")));
}

TEST_F(ConfigTest, AFlagOverridesTheFile) {
  // The file's socket and call deadline lose to the command line's: the
  // harness connects on its own --socket, and the hang is cut at 300 ms.
  WriteConfig(absl::StrCat("[server]\nsocket = \"", "/nonexistent-dir/never.sock", R"("
[defaults]
call_deadline_ms = 60000
[modules.m]
path = "@V1@"
)"));
  ASSERT_NO_FATAL_FAILURE(StartWithConfig({"--call-deadline-ms", "300"}));
  ASSERT_TRUE(WaitForLoaded({"m"})) << relibd_->Log();
  auto started = std::chrono::steady_clock::now();
  grpc::Status call;
  Call("m", "hang", "", &call);
  EXPECT_EQ(call.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST_F(ConfigTest, ABadFileIsRefusedAtStartWithFileAndLine) {
  WriteConfig("[server]\nlog_level = \"info\"\nsockett = \"/x\"\n");
  CommandResult r = StartRefused();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, AllOf(HasSubstr(config_ + ":3:1:"), HasSubstr("unknown key 'server.sockett'")));

  WriteConfig("[defaults]\nfd_policy = \"shut\"\n");
  r = StartRefused();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, AllOf(HasSubstr(config_ + ":2:13:"), HasSubstr("fd_policy")));

  fs::remove(config_);
  r = StartRefused();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr(config_));
}

constexpr char kFourModules[] = R"(
[modules.changed]
path = "@V1@"
[modules.removed]
path = "@V1@"
[modules.untouched]
path = "@V1@"
group = "steady"
)";

constexpr char kFourModulesAfter[] = R"(
[modules.changed]
path = "@V2@"
[modules.added]
path = "@V2@"
watch = true
[modules.untouched]
path = "@V1@"
group = "steady"
)";

TEST_F(ConfigTest, SighupAppliesOnlyTheDifference) {
  WriteConfig(kFourModules);
  ASSERT_NO_FATAL_FAILURE(StartWithConfig());
  ASSERT_TRUE(WaitForLoaded({"changed", "removed", "untouched"})) << relibd_->Log();
  // An API-loaded module is not the file's to remove.
  ASSERT_TRUE(Load("api", k_versioned_v1).ok());
  v1::StatusResponse before = Status();
  const v1::ModuleInfo untouched = *FindModule(before, "untouched");
  EXPECT_EQ(FindModule(before, "api")->source(), v1::MODULE_SOURCE_API);
  EventLog events(relibd_->stub());

  WriteConfig(kFourModulesAfter);
  ASSERT_EQ(relibd_->process().Signal(SIGHUP).code(), absl::StatusCode::kOk);
  ASSERT_TRUE(WaitFor([&](const v1::StatusResponse& s) {
    const v1::ModuleInfo* changed = FindModule(s, "changed");
    return FindModule(s, "added") && !FindModule(s, "removed") && changed && changed->version() == 2;
  })) << relibd_->Log();
  EXPECT_EQ(Call("changed", "version"), "v2");
  EXPECT_EQ(Call("added", "version"), "v2");
  EXPECT_EQ(Call("api", "version"), "v1");
  v1::StatusResponse after = Status();
  EXPECT_TRUE(FindModule(after, "added")->watch());
  const v1::ModuleInfo* still = FindModule(after, "untouched");
  ASSERT_NE(still, nullptr);
  EXPECT_EQ(still->worker_pid(), untouched.worker_pid());
  EXPECT_EQ(still->version(), untouched.version());
  EXPECT_EQ(still->stats().loaded_at_unix_ms(), untouched.stats().loaded_at_unix_ms());
  EXPECT_EQ(::kill(untouched.worker_pid(), 0), 0);

  // Each outcome is an event with cause "config", and a log line.
  auto config_events = [&] {
    return events.All([](const v1::Event& e) { return e.kind() == v1::EVENT_KIND_CONFIG; });
  };
  for (int i = 0; i < 200 && config_events().size() < 4; ++i) std::this_thread::sleep_for(25ms);
  std::map<std::string, std::string> outcome;
  for (const auto& e : config_events()) {
    EXPECT_EQ(e.cause(), "config");
    outcome[e.module()] = e.message();
  }
  EXPECT_THAT(outcome["added"], HasSubstr("added"));
  EXPECT_THAT(outcome["removed"], HasSubstr("removed"));
  EXPECT_THAT(outcome["changed"], HasSubstr("changed"));
  EXPECT_THAT(outcome["untouched"], HasSubstr("unchanged"));
  EXPECT_EQ(outcome.count("api"), 0u);
  EXPECT_EQ(events.All([](const v1::Event& e) {
                      return e.kind() == v1::EVENT_KIND_RELOADED && e.module() == "changed" && e.cause() == "config";
                    }).size(),
            1u);
  std::string log = relibd_->Log();
  EXPECT_THAT(log, AllOf(HasSubstr("phase=config"), HasSubstr("module=untouched"), HasSubstr("unchanged")));
}

TEST_F(ConfigTest, ReloadConfigPrintsTheOutcomes) {
  WriteConfig(kFourModules);
  ASSERT_NO_FATAL_FAILURE(StartWithConfig());
  ASSERT_TRUE(WaitForLoaded({"changed", "removed", "untouched"})) << relibd_->Log();
  ASSERT_TRUE(Load("api", k_versioned_v1).ok());
  WriteConfig(absl::StrCat(kFourModulesAfter, "[modules.api]\npath = \"@V1@\"\n[server]\nmax_message_mb = 7\n"));
  CommandResult r = relibd_->Ctl({"reload-config"});
  // The file's "api" collides with the API-loaded module: that one outcome fails.
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("added"), HasSubstr("removed"), HasSubstr("changed"), HasSubstr("unchanged"),
                           HasSubstr("failed")));
  EXPECT_THAT(r.out, AllOf(HasSubstr("untouched"), HasSubstr("loaded through the API")));
  EXPECT_THAT(r.out, AllOf(HasSubstr("server.max_message_mb"), HasSubstr("restart")));
  EXPECT_EQ(Call("changed", "version"), "v2");

  // Nothing changed since: everything is unchanged.
  WriteConfig(kFourModulesAfter);
  r = relibd_->Ctl({"reload-config", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, Not(HasSubstr("CONFIG_CHANGE_ADDED")));
  EXPECT_THAT(r.out, HasSubstr("CONFIG_CHANGE_UNCHANGED"));
}

TEST_F(ConfigTest, ABadFileOnReloadKeepsEverythingRunning) {
  WriteConfig(kFourModules);
  ASSERT_NO_FATAL_FAILURE(StartWithConfig());
  ASSERT_TRUE(WaitForLoaded({"changed", "removed", "untouched"})) << relibd_->Log();
  v1::StatusResponse before = Status();

  WriteConfig("[modules.changed]\npath = \"/x.so\"\nleak_policy = \"sometimes\"\n");
  ASSERT_EQ(relibd_->process().Signal(SIGHUP).code(), absl::StatusCode::kOk);
  std::string why = config_ + ":3:15:";
  for (int i = 0; i < 200 && relibd_->Log().find(why) == std::string::npos; ++i) std::this_thread::sleep_for(25ms);
  EXPECT_THAT(relibd_->Log(), AllOf(HasSubstr(why), HasSubstr("keeping the running configuration")));
  CommandResult r = relibd_->Ctl({"reload-config"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr(why), HasSubstr("INVALID_ARGUMENT")));

  v1::StatusResponse after = Status();
  ASSERT_EQ(after.modules_size(), 3);
  for (const auto& module : before.modules()) {
    const v1::ModuleInfo* now = FindModule(after, module.name());
    ASSERT_NE(now, nullptr) << module.name();
    EXPECT_EQ(now->version(), module.version());
    EXPECT_EQ(now->worker_pid(), module.worker_pid());
    EXPECT_EQ(Call(module.name(), "version"), "v1");
  }
  EXPECT_TRUE(relibd_->process().TryReap().value() == std::nullopt);
}

TEST_F(ConfigTest, ReloadConfigWithoutAFileIsAPreconditionError) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  CommandResult r = relibd_->Ctl({"reload-config"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("--config"), HasSubstr("FAILED_PRECONDITION")));
}

}  // namespace
}  // namespace relib::testing

namespace relib::testing {
namespace {

TEST_F(ConfigTest, AccessSettingsComeFromTheFile) {
  const std::string modules = files_->path() + "/mods";
  fs::create_directories(modules);
  fs::permissions(modules, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
  fs::copy_file(kHelloPath, modules + "/libhello.so");
  WriteConfig(absl::StrCat("[server]\nsocket_mode = \"0600\"\n[access]\nallowed_module_dirs = [\"", modules,
                           "\"]\ncontrol_groups = [\"root\"]\n"));
  // Only the file's allowed directory: none from the harness.
  auto relibd = RelibdProcess::Start({"--config", config_}, /*default_module_dirs=*/false);
  ASSERT_THAT(relibd, IsOk());
  relibd_ = std::move(relibd).value();
  EXPECT_EQ(fs::status(relibd_->socket()).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_TRUE(Load("inside", modules + "/libhello.so").ok()) << relibd_->Log();
  grpc::Status outside = Load("outside", kHelloPath);
  EXPECT_EQ(outside.error_code(), grpc::StatusCode::PERMISSION_DENIED) << outside.error_message();
  EXPECT_THAT(outside.error_message(), ::testing::HasSubstr(modules));
}

}  // namespace
}  // namespace relib::testing
