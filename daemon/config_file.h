// relibd's configuration file (TOML, `relibd --config FILE`): read and
// checked into plain structs. Knows nothing of the Supervisor or of gRPC;
// config_apply.h applies the result.
#ifndef RELIB_DAEMON_CONFIG_FILE_H_
#define RELIB_DAEMON_CONFIG_FILE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// A daemon-wide setting that is also a relibd flag. The file's value is
// handed to the command-line parser as that flag, ahead of the real command
// line, so a flag given on the command line overrides the file.
struct FlagSetting {
  std::string key;    // "server.socket": section.key as written in the file
  std::string flag;   // "--socket"
  std::string value;  // as the flag takes it (paths made absolute)
  int line = 0;
  bool operator==(const FlagSetting&) const = default;
};

// One [groups.NAME] table: declares the group; its resource limits are in
// RelibdConfig::limits.
struct GroupConfig {
  std::string name;
  int line = 0;
  bool operator==(const GroupConfig&) const = default;
};

// One [modules.NAME] table, with [defaults] already applied to `options`.
struct ModuleConfig {
  std::string name;
  std::string path;   // absolute: a relative path is resolved against the file's directory
  std::string group;  // "" = the default group
  bool watch = false;
  // Policies, thread grace, capture_sites and deadlines (0 = relibd's
  // default deadline, the --*-deadline-ms flags / [defaults] *_deadline_ms).
  v1::ModuleOptions options;
  int line = 0;
};

struct RelibdConfig {
  std::string file;                   // the file as given (for messages)
  std::vector<FlagSetting> settings;  // in the order of the key table, one per key (per list element) present
  // [groups.NAME] limits as --worker-limit NAME:KIND=VALUE settings (by group, then kind).
  std::vector<FlagSetting> limits;
  std::vector<GroupConfig> groups;    // sorted by name
  std::vector<ModuleConfig> modules;  // sorted by name
};

// Reads and checks `path`. Every error is INVALID_ARGUMENT (NOT_FOUND if the
// file cannot be read) with a message "FILE:LINE:COLUMN: reason": TOML syntax,
// unknown keys (named with their section), wrong types, values out of range,
// unknown policy names, invalid module or group names, a module without path.
absl::StatusOr<RelibdConfig> ParseConfigFile(const std::string& path);
// Same, from text; `file` names it in messages and anchors relative paths.
absl::StatusOr<RelibdConfig> ParseConfigText(std::string_view text, const std::string& file);

// The file's settings as command-line arguments ("--socket", "/run/x", ...).
std::vector<std::string> FlagArguments(const RelibdConfig& config);

// Finds `--config FILE` or `--config=FILE` in argv; "" if absent.
std::string ConfigPathFromArgs(int argc, const char* const* argv);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_CONFIG_FILE_H_
