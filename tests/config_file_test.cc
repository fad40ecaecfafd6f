// The config file parser over real files: every key, and each kind of
// mistake refused with FILE:LINE:COLUMN and the reason.
#include "daemon/config_file.h"

#include <algorithm>
#include <fstream>

#include "common/temp_dir.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::daemon {
namespace {

using ::relib::testing::IsOk;
using ::relib::testing::StatusIs;
using ::testing::HasSubstr;

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = common::TempDir::Create("/tmp", "relib-config-");
    ASSERT_THAT(dir, IsOk());
    dir_.emplace(std::move(dir).value());
  }
  std::string Write(const std::string& text) {
    std::string path = dir_->path() + "/relibd.toml";
    std::ofstream(path) << text;
    return path;
  }
  std::string Value(const RelibdConfig& config, const std::string& flag) {
    for (const auto& setting : config.settings) {
      if (setting.flag == flag) return setting.value;
    }
    return "<absent>";
  }
  std::optional<common::TempDir> dir_;
};

constexpr char kEveryKey[] = R"(# every key relibd knows
[server]
socket = "/run/relibd/test.sock"
log_level = "debug"
max_message_mb = 32
watch_debounce_ms = 150
socket_mode = "0640"
socket_owner = "root"
socket_group = "relibd"
max_rpc_threads = 64
stop_timeout_ms = 15000

[access]
view_groups = ["viewers", "auditors"]
control_groups = ["developers"]
allowed_module_dirs = ["modules", "/opt/relibd/modules"]

[paths]
run_dir = "run"
state_dir = "/var/lib/relibd"

[worker]
path = "/usr/lib/relibd/relib-worker"
term_grace_ms = 300
invalid_free = "leak"
user = "relib-worker"

[limits]
max_module_size_mb = 64
state_store_mb = 8

[restart]
max_restarts = 7
window_s = 30
backoff_ms = 50
stable_s = 5
max_failed_starts = 4

[defaults]
load_deadline_ms = 1001
on_load_deadline_ms = 1002
call_deadline_ms = 1003
before_unload_deadline_ms = 1004
unload_deadline_ms = 1005
thread_grace_ms = 250
leak_policy = "free"
fd_policy = "close"
mapping_policy = "unmap"
signal_policy = "refuse"
dlopen_policy = "close"
child_policy = "kill"
capture_sites = true

[groups.fast]
memory = "768M"
data = "512M"
nofile = 256
nproc = 64
cpu = 30
core = 0

[modules.alpha]
path = "lib/libalpha.so"
group = "fast"
watch = true

[modules.beta]
path = "/opt/libbeta.so"
thread_grace_ms = 10
leak_policy = "report"
fd_policy = "report"
mapping_policy = "report"
signal_policy = "restore"
dlopen_policy = "report"
child_policy = "report"
capture_sites = false
load_deadline_ms = 11
on_load_deadline_ms = 12
call_deadline_ms = 13
before_unload_deadline_ms = 14
unload_deadline_ms = 15
)";

TEST_F(ConfigFileTest, EveryKeyIsParsed) {
  std::string path = Write(kEveryKey);
  auto config = ParseConfigFile(path);
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(Value(*config, "--socket"), "/run/relibd/test.sock");
  EXPECT_EQ(Value(*config, "--log-level"), "debug");
  EXPECT_EQ(Value(*config, "--max-message-mb"), "32");
  EXPECT_EQ(Value(*config, "--watch-debounce-ms"), "150");
  EXPECT_EQ(Value(*config, "--run-dir"), dir_->path() + "/run");  // relative to the file's directory
  EXPECT_EQ(Value(*config, "--state-dir"), "/var/lib/relibd");
  EXPECT_EQ(Value(*config, "--worker"), "/usr/lib/relibd/relib-worker");
  EXPECT_EQ(Value(*config, "--term-grace-ms"), "300");
  EXPECT_EQ(Value(*config, "--invalid-free"), "leak");
  EXPECT_EQ(Value(*config, "--max-module-size-mb"), "64");
  EXPECT_EQ(Value(*config, "--state-store-mb"), "8");
  EXPECT_EQ(Value(*config, "--max-restarts"), "7");
  EXPECT_EQ(Value(*config, "--restart-window-s"), "30");
  EXPECT_EQ(Value(*config, "--restart-backoff-ms"), "50");
  EXPECT_EQ(Value(*config, "--restart-stable-s"), "5");
  EXPECT_EQ(Value(*config, "--max-failed-starts"), "4");
  EXPECT_EQ(Value(*config, "--load-deadline-ms"), "1001");
  EXPECT_EQ(Value(*config, "--on-load-deadline-ms"), "1002");
  EXPECT_EQ(Value(*config, "--call-deadline-ms"), "1003");
  EXPECT_EQ(Value(*config, "--before-unload-deadline-ms"), "1004");
  EXPECT_EQ(Value(*config, "--unload-deadline-ms"), "1005");
  EXPECT_EQ(Value(*config, "--socket-mode"), "0640");
  EXPECT_EQ(Value(*config, "--socket-owner"), "root");
  EXPECT_EQ(Value(*config, "--socket-group"), "relibd");
  EXPECT_EQ(Value(*config, "--max-rpc-threads"), "64");
  EXPECT_EQ(Value(*config, "--stop-timeout-ms"), "15000");
  EXPECT_EQ(Value(*config, "--worker-user"), "relib-worker");
  auto values = [&](const std::string& flag) {
    std::vector<std::string> found;
    for (const FlagSetting& setting : config->settings) {
      if (setting.flag == flag) found.push_back(setting.value);
    }
    return found;
  };
  EXPECT_EQ(values("--view-group"), (std::vector<std::string>{"viewers", "auditors"}));
  EXPECT_EQ(values("--control-group"), (std::vector<std::string>{"developers"}));
  EXPECT_EQ(values("--allow-module-dir"),
            (std::vector<std::string>{dir_->path() + "/modules", "/opt/relibd/modules"}));
  EXPECT_EQ(config->settings.size(), 21u + 11u);
  auto args = FlagArguments(*config);
  EXPECT_EQ(args.size(), 2 * (21u + 11u + config->limits.size()));
  EXPECT_NE(std::find(args.begin(), args.end(), "--socket"), args.end());

  std::vector<std::string> limits;
  for (const FlagSetting& limit : config->limits) limits.push_back(limit.flag + " " + limit.value);
  EXPECT_EQ(limits, (std::vector<std::string>{"--worker-limit fast:core=0", "--worker-limit fast:cpu=30",
                                              "--worker-limit fast:data=512M", "--worker-limit fast:memory=768M",
                                              "--worker-limit fast:nofile=256", "--worker-limit fast:nproc=64"}));
  ASSERT_EQ(config->groups.size(), 1u);
  EXPECT_EQ(config->groups[0].name, "fast");

  ASSERT_EQ(config->modules.size(), 2u);
  const ModuleConfig& alpha = config->modules[0];
  EXPECT_EQ(alpha.name, "alpha");
  EXPECT_EQ(alpha.path, dir_->path() + "/lib/libalpha.so");
  EXPECT_EQ(alpha.group, "fast");
  EXPECT_TRUE(alpha.watch);
  // [defaults] fill what the module leaves out; deadlines stay 0 (= relibd's defaults).
  EXPECT_EQ(alpha.options.thread_grace_ms(), 250u);
  EXPECT_EQ(alpha.options.leak_policy(), v1::LEAK_POLICY_FREE);
  EXPECT_EQ(alpha.options.fd_policy(), v1::FD_POLICY_CLOSE);
  EXPECT_EQ(alpha.options.mapping_policy(), v1::MAPPING_POLICY_UNMAP);
  EXPECT_EQ(alpha.options.signal_policy(), v1::SIGNAL_POLICY_REFUSE);
  EXPECT_EQ(alpha.options.dlopen_policy(), v1::DLOPEN_POLICY_CLOSE);
  EXPECT_EQ(alpha.options.child_policy(), v1::CHILD_POLICY_KILL);
  EXPECT_TRUE(alpha.options.capture_sites());
  EXPECT_EQ(alpha.options.call_deadline_ms(), 0u);

  const ModuleConfig& beta = config->modules[1];
  EXPECT_EQ(beta.name, "beta");
  EXPECT_EQ(beta.path, "/opt/libbeta.so");
  EXPECT_EQ(beta.group, "");
  EXPECT_FALSE(beta.watch);
  EXPECT_EQ(beta.options.thread_grace_ms(), 10u);
  EXPECT_EQ(beta.options.leak_policy(), v1::LEAK_POLICY_REPORT);
  EXPECT_EQ(beta.options.fd_policy(), v1::FD_POLICY_REPORT);
  EXPECT_EQ(beta.options.mapping_policy(), v1::MAPPING_POLICY_REPORT);
  EXPECT_EQ(beta.options.signal_policy(), v1::SIGNAL_POLICY_RESTORE);
  EXPECT_EQ(beta.options.dlopen_policy(), v1::DLOPEN_POLICY_REPORT);
  EXPECT_EQ(beta.options.child_policy(), v1::CHILD_POLICY_REPORT);
  EXPECT_FALSE(beta.options.capture_sites());
  EXPECT_EQ(beta.options.load_deadline_ms(), 11u);
  EXPECT_EQ(beta.options.on_load_deadline_ms(), 12u);
  EXPECT_EQ(beta.options.call_deadline_ms(), 13u);
  EXPECT_EQ(beta.options.before_unload_deadline_ms(), 14u);
  EXPECT_EQ(beta.options.unload_deadline_ms(), 15u);
}

TEST_F(ConfigFileTest, TheExampleFileIsValid) {
  auto config = ParseConfigFile(std::string(testing::kSourceDir) + "/examples/relibd.toml");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->modules.size(), 2u);
  EXPECT_EQ(config->modules[0].options.fd_policy(), v1::FD_POLICY_CLOSE);  // [defaults]
}

TEST_F(ConfigFileTest, AnEmptyFileIsValid) {
  auto config = ParseConfigFile(Write("# nothing yet\n"));
  ASSERT_THAT(config, IsOk());
  EXPECT_TRUE(config->settings.empty());
  EXPECT_TRUE(config->modules.empty());
}

TEST_F(ConfigFileTest, AnUnknownKeyIsRefusedWithItsLine) {
  std::string path = Write("[server]\nlog_level = \"info\"\nsockt = \"/x\"\n");
  EXPECT_THAT(ParseConfigFile(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                              AllOf(HasSubstr(path + ":3:1:"), HasSubstr("server.sockt"))));
  path = Write("[modules.a]\npath = \"/a.so\"\nleak_polcy = \"free\"\n");
  EXPECT_THAT(ParseConfigFile(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                              AllOf(HasSubstr(path + ":3:1:"), HasSubstr("modules.a.leak_polcy"))));
  path = Write("\n[sever]\n");
  EXPECT_THAT(ParseConfigFile(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                              AllOf(HasSubstr(path + ":2:"), HasSubstr("'sever'"))));
}

TEST_F(ConfigFileTest, BadValuesAreRefusedWithTheirLine) {
  struct Case {
    std::string text;
    std::string where;
    std::string why;
  };
  std::vector<Case> cases = {
      {"[defaults]\nleak_policy = \"maybe\"\n", ":2:15:", "report, free"},
      {"[limits]\nmax_module_size_mb = -5\n", ":2:22:", "between 1 and"},
      {"[restart]\n\nmax_restarts = \"3\"\n", ":3:16:", "integer"},
      {"[server]\nlog_level = \"loud\"\n", ":2:13:", "log_level"},
      {"[modules.x]\nwatch = true\n", ":1:", "path"},
      {"[modules.\"bad name\"]\npath = \"/a.so\"\n", ":1:", "bad name"},
      {"[modules.a]\npath = \"/a.so\"\ngroup = \"no/slash\"\n", ":3:9:", "group"},
      {"[modules.a]\npath = \"/a.so\"\ncall_deadline_ms = 5000000000\n", ":3:20:", "call_deadline_ms"},
      {"[server]\nsocket = \"\"\n", ":2:10:", "empty"},
      {"[server\nsocket = \"/x\"\n", ":1:", ""},  // TOML syntax
      {"modules = 3\n", ":1:", "table"},
  };
  for (const Case& c : cases) {
    std::string path = Write(c.text);
    EXPECT_THAT(ParseConfigFile(path),
                StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr(path + c.where), HasSubstr(c.why))))
        << c.text;
  }
}

TEST_F(ConfigFileTest, AMissingFileIsNotFound) {
  EXPECT_THAT(ParseConfigFile(dir_->path() + "/absent.toml"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent.toml")));
}

TEST_F(ConfigFileTest, ConfigPathIsFoundInArgv) {
  const char* spaced[] = {"relibd", "--log-level", "info", "--config", "/etc/r.toml"};
  EXPECT_EQ(ConfigPathFromArgs(5, spaced), "/etc/r.toml");
  const char* joined[] = {"relibd", "--config=/etc/s.toml"};
  EXPECT_EQ(ConfigPathFromArgs(2, joined), "/etc/s.toml");
  const char* none[] = {"relibd", "--socket", "/x"};
  EXPECT_EQ(ConfigPathFromArgs(3, none), "");
}

}  // namespace
}  // namespace relib::daemon
