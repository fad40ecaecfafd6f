#include "daemon/config_file.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/message_limits.h"
#include "toml++/toml.h"

namespace relib::daemon {
namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

// kList / kPathList: arrays of strings, one flag argument per element (the
// flag is repeatable; the file's elements and the command line's add up).
enum class Kind { kInt, kString, kPath, kChoice, kBool, kList, kPathList };

// One key of the file. A key with a `flag` is a daemon-wide setting handed to
// the command-line parser; one without is a module option ([defaults] and
// [modules.NAME]).
// (const char*, not std::string_view: Debian's abseil does not take std::string_view in StrCat.)
struct Key {
  const char* name;
  Kind kind;
  const char* flag = "";
  int64_t min = 0;
  int64_t max = 0;
  std::initializer_list<const char*> choices = {};
};

struct Section {
  const char* name;
  std::initializer_list<Key> keys;
};

// Daemon-wide settings, by section, in the order they are documented (README
// "Configuration file"). A new relibd flag that belongs in the file is one
// row here.
const std::initializer_list<Section> kSections = {
    {"server",
     {{"socket", Kind::kPath, "--socket"},
      {"log_level", Kind::kChoice, "--log-level", 0, 0, {"trace", "debug", "info", "warn", "error"}},
      {"max_message_mb", Kind::kInt, "--max-message-mb", 1, common::kMaxMaxMessageMb},
      {"watch_debounce_ms", Kind::kInt, "--watch-debounce-ms", 0, 60000},
      {"socket_mode", Kind::kString, "--socket-mode"},
      {"socket_owner", Kind::kString, "--socket-owner"},
      {"socket_group", Kind::kString, "--socket-group"},
      {"max_rpc_threads", Kind::kInt, "--max-rpc-threads", 4, 4096},
      {"stop_timeout_ms", Kind::kInt, "--stop-timeout-ms", 0, 3600 * 1000}}},
    {"access",
     {{"view_groups", Kind::kList, "--view-group"},
      {"control_groups", Kind::kList, "--control-group"},
      {"allowed_module_dirs", Kind::kPathList, "--allow-module-dir"}}},
    {"paths", {{"run_dir", Kind::kPath, "--run-dir"}, {"state_dir", Kind::kPath, "--state-dir"}}},
    {"worker",
     {{"path", Kind::kPath, "--worker"},
      {"term_grace_ms", Kind::kInt, "--term-grace-ms", 0, 600000},
      {"invalid_free", Kind::kChoice, "--invalid-free", 0, 0, {"abort", "leak"}},
      {"user", Kind::kString, "--worker-user"},
      {"spare_workers", Kind::kInt, "--spare-workers", 0, 1}}},
    {"limits",
     {{"max_module_size_mb", Kind::kInt, "--max-module-size-mb", 1, 1 << 20},
      {"state_store_mb", Kind::kInt, "--state-store-mb", 1, 1 << 20}}},
    {"restart",
     {{"max_restarts", Kind::kInt, "--max-restarts", 0, kMaxInt},
      {"window_s", Kind::kInt, "--restart-window-s", 1, 86400},
      {"backoff_ms", Kind::kInt, "--restart-backoff-ms", 0, 3600000},
      {"stable_s", Kind::kInt, "--restart-stable-s", 0, 86400},
      {"max_failed_starts", Kind::kInt, "--max-failed-starts", 1, kMaxInt}}},
    {"defaults",
     {{"load_deadline_ms", Kind::kInt, "--load-deadline-ms", 1, kMaxInt},
      {"on_load_deadline_ms", Kind::kInt, "--on-load-deadline-ms", 1, kMaxInt},
      {"call_deadline_ms", Kind::kInt, "--call-deadline-ms", 1, kMaxInt},
      {"before_unload_deadline_ms", Kind::kInt, "--before-unload-deadline-ms", 1, kMaxInt},
      {"unload_deadline_ms", Kind::kInt, "--unload-deadline-ms", 1, kMaxInt}}},
};

// Module options: allowed in [defaults] (applied to every [modules.NAME]
// that leaves them out) and in [modules.NAME].
const std::initializer_list<Key> kModuleDefaultKeys = {
    {"thread_grace_ms", Kind::kInt, {}, 0, kMaxInt},
    {"leak_policy", Kind::kChoice, {}, 0, 0, {"report", "free"}},
    {"fd_policy", Kind::kChoice, {}, 0, 0, {"report", "close"}},
    {"mapping_policy", Kind::kChoice, {}, 0, 0, {"report", "unmap"}},
    {"signal_policy", Kind::kChoice, {}, 0, 0, {"restore", "refuse"}},
    {"dlopen_policy", Kind::kChoice, {}, 0, 0, {"report", "close"}},
    {"child_policy", Kind::kChoice, {}, 0, 0, {"report", "kill"}},
    {"capture_sites", Kind::kBool},
};

// Only in [modules.NAME]. Per-module deadlines: 0 = relibd's default.
const std::initializer_list<Key> kModuleOnlyKeys = {
    {"path", Kind::kPath},
    {"group", Kind::kString},
    {"watch", Kind::kBool},
    {"load_deadline_ms", Kind::kInt, {}, 0, kMaxInt},
    {"on_load_deadline_ms", Kind::kInt, {}, 0, kMaxInt},
    {"call_deadline_ms", Kind::kInt, {}, 0, kMaxInt},
    {"before_unload_deadline_ms", Kind::kInt, {}, 0, kMaxInt},
    {"unload_deadline_ms", Kind::kInt, {}, 0, kMaxInt},
};

// [groups.NAME]: resource limits of the group's workers, each one
// --worker-limit NAME:KIND=VALUE (sizes take a K/M/G suffix, so all are strings
// or integers; relibd checks the value as it checks the flag).
const std::initializer_list<Key> kGroupKeys = {
    {"memory", Kind::kString, "--worker-limit"}, {"data", Kind::kString, "--worker-limit"},
    {"nofile", Kind::kString, "--worker-limit"}, {"nproc", Kind::kString, "--worker-limit"},
    {"cpu", Kind::kString, "--worker-limit"},    {"core", Kind::kString, "--worker-limit"},
};

const Key* FindKey(std::initializer_list<Key> keys, std::string_view name) {
  for (const Key& key : keys) {
    if (name == key.name) return &key;
  }
  return nullptr;
}

std::string KeyNames(std::initializer_list<Key> a, std::initializer_list<Key> b = {}) {
  std::vector<const char*> names;
  for (const Key& key : a) names.push_back(key.name);
  for (const Key& key : b) names.push_back(key.name);
  return names.empty() ? "none yet" : absl::StrJoin(names, ", ");
}

const char* TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number with a fraction";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date or time";
  }
}

bool ValidName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
  return ok;
}

class Parser {
 public:
  Parser(std::string file) : file_(std::move(file)) {
    std::error_code error;
    auto absolute = std::filesystem::absolute(file_, error);
    base_dir_ = (error ? std::filesystem::path(file_) : absolute).parent_path();
  }

  absl::StatusOr<RelibdConfig> Parse(std::string_view text) {
    toml::table root;
    try {
      root = toml::parse(text, file_);
    } catch (const toml::parse_error& e) {
      return Error(e.source().begin, std::string(e.description()));
    }
    RelibdConfig config;
    config.file = file_;
    // [defaults] first: the modules' options start from it, wherever it is in the file.
    if (const toml::node* defaults = root.get("defaults"); defaults && defaults->is_table()) {
      if (absl::Status status = ParseDefaults(*defaults->as_table(), config); !status.ok()) return status;
    }
    for (auto&& [key, node] : root) {
      const std::string name(key.str());
      if (!node.is_table()) {
        return Error(key.source().begin, absl::StrCat("'", name, "' must be a table ([", name, "]), not ",
                                                       TypeName(node.type())));
      }
      const toml::table& table = *node.as_table();
      absl::Status status;
      if (name == "defaults") {
        continue;
      } else if (name == "groups") {
        status = ParseGroups(table, config);
      } else if (name == "modules") {
        status = ParseModules(table, config);
      } else if (const Section* section = FindSection(name)) {
        status = ParseSettings(*section, table, config);
      } else {
        std::vector<const char*> known;
        for (const Section& s : kSections) known.push_back(s.name);
        status = Error(key.source().begin, absl::StrCat("unknown section '", name, "' (sections: ",
                                                         absl::StrJoin(known, ", "), ", groups, modules)"));
      }
      if (!status.ok()) return status;
    }
    // Settings in the key table's order, whatever the file's order.
    std::vector<FlagSetting> ordered;
    for (const Section& section : kSections) {
      for (const Key& key : section.keys) {
        for (const FlagSetting& setting : config.settings) {
          if (setting.flag == key.flag) ordered.push_back(setting);
        }
      }
    }
    config.settings = std::move(ordered);
    std::sort(config.groups.begin(), config.groups.end(), [](auto& a, auto& b) { return a.name < b.name; });
    std::sort(config.modules.begin(), config.modules.end(), [](auto& a, auto& b) { return a.name < b.name; });
    return config;
  }

 private:
  static const Section* FindSection(std::string_view name) {
    for (const Section& section : kSections) {
      if (name == section.name) return &section;
    }
    return nullptr;
  }

  absl::Status Error(const toml::source_position& where, const std::string& reason) const {
    return absl::InvalidArgumentError(absl::StrCat(file_, ":", where.line, ":", where.column, ": ", reason));
  }

  absl::Status UnknownKey(const toml::key& key, const std::string& section, const std::string& known) const {
    return Error(key.source().begin, absl::StrCat("unknown key '", section, ".", std::string(key.str()), "' (keys of [", section,
                                                  "]: ", known, ")"));
  }

  // Checks `node` against `key`; the value as text (paths made absolute).
  absl::StatusOr<std::string> Value(const Key& key, const toml::node& node, const std::string& full_name) const {
    auto wrong_type = [&](const char* wanted) {
      return Error(node.source().begin,
                   absl::StrCat("'", full_name, "' must be ", wanted, ", not ", TypeName(node.type())));
    };
    switch (key.kind) {
      case Kind::kInt: {
        if (!node.is_integer()) return wrong_type("an integer");
        int64_t value = node.as_integer()->get();
        if (value < key.min || value > key.max) {
          return Error(node.source().begin, absl::StrCat("'", full_name, "' must be between ", key.min, " and ",
                                                         key.max, ", not ", value));
        }
        return absl::StrCat(value);
      }
      case Kind::kList:
      case Kind::kPathList:
        return absl::InternalError("lists are read by Values()");
      case Kind::kBool:
        if (!node.is_boolean()) return wrong_type("true or false");
        return std::string(node.as_boolean()->get() ? "true" : "false");
      case Kind::kString:
      case Kind::kPath:
      case Kind::kChoice: {
        if (!node.is_string()) return wrong_type("a string");
        std::string value = node.as_string()->get();
        if (value.empty()) return Error(node.source().begin, absl::StrCat("'", full_name, "' is empty"));
        if (value.find('\0') != std::string::npos) {
          return Error(node.source().begin, absl::StrCat("'", full_name, "' contains a NUL character"));
        }
        if (key.kind == Kind::kChoice &&
            std::none_of(key.choices.begin(), key.choices.end(), [&](const char* c) { return value == c; })) {
          return Error(node.source().begin, absl::StrCat("'", full_name, "' must be one of ",
                                                         absl::StrJoin(key.choices, ", "), ", not '", value, "'"));
        }
        if (key.kind == Kind::kPath && value[0] != '/') value = (base_dir_ / value).lexically_normal().string();
        return value;
      }
    }
    return std::string();
  }

  absl::Status ParseSettings(const Section& section, const toml::table& table, RelibdConfig& config,
                             std::initializer_list<Key> also_allowed = {}) {
    for (auto&& [key, node] : table) {
      const std::string name(key.str());
      const Key* known = FindKey(section.keys, name);
      if (!known) {
        if (FindKey(also_allowed, name)) continue;
        return UnknownKey(key, std::string(section.name), KeyNames(section.keys, also_allowed));
      }
      const std::string full_name = absl::StrCat(section.name, ".", name);
      if (known->kind == Kind::kList || known->kind == Kind::kPathList) {
        const toml::array* array = node.as_array();
        if (array == nullptr) {
          return Error(node.source().begin,
                       absl::StrCat("'", full_name, "' must be an array of strings, not ", TypeName(node.type())));
        }
        Key element = *known;
        element.kind = known->kind == Kind::kPathList ? Kind::kPath : Kind::kString;
        for (const toml::node& item : *array) {
          auto value = Value(element, item, full_name);
          if (!value.ok()) return value.status();
          config.settings.push_back(FlagSetting{full_name, std::string(known->flag), std::move(value).value(),
                                                static_cast<int>(key.source().begin.line)});
        }
        continue;
      }
      auto value = Value(*known, node, full_name);
      if (!value.ok()) return value.status();
      config.settings.push_back(FlagSetting{full_name, std::string(known->flag), std::move(value).value(),
                                            static_cast<int>(key.source().begin.line)});
    }
    return absl::OkStatus();
  }

  absl::Status ParseDefaults(const toml::table& table, RelibdConfig& config) {
    if (absl::Status status = ParseSettings(*FindSection("defaults"), table, config, kModuleDefaultKeys);
        !status.ok()) {
      return status;
    }
    for (auto&& [key, node] : table) {
      if (const Key* option = FindKey(kModuleDefaultKeys, key.str())) {
        if (absl::Status status = ApplyOption(*option, node, absl::StrCat("defaults.", std::string(key.str())), defaults_);
            !status.ok()) {
          return status;
        }
      }
    }
    return absl::OkStatus();
  }

  // Sets one module option in `options`.
  absl::Status ApplyOption(const Key& key, const toml::node& node, const std::string& full_name,
                           v1::ModuleOptions& options) const {
    auto value = Value(key, node, full_name);
    if (!value.ok()) return value.status();
    const std::string& v = *value;
    const std::string_view name = key.name;  // compared only
    auto number = [&] { return static_cast<uint32_t>(std::stoll(v)); };
    if (name == "thread_grace_ms") options.set_thread_grace_ms(number());
    else if (name == "leak_policy") options.set_leak_policy(v == "free" ? v1::LEAK_POLICY_FREE : v1::LEAK_POLICY_REPORT);
    else if (name == "fd_policy") options.set_fd_policy(v == "close" ? v1::FD_POLICY_CLOSE : v1::FD_POLICY_REPORT);
    else if (name == "mapping_policy")
      options.set_mapping_policy(v == "unmap" ? v1::MAPPING_POLICY_UNMAP : v1::MAPPING_POLICY_REPORT);
    else if (name == "signal_policy")
      options.set_signal_policy(v == "refuse" ? v1::SIGNAL_POLICY_REFUSE : v1::SIGNAL_POLICY_RESTORE);
    else if (name == "dlopen_policy")
      options.set_dlopen_policy(v == "close" ? v1::DLOPEN_POLICY_CLOSE : v1::DLOPEN_POLICY_REPORT);
    else if (name == "child_policy")
      options.set_child_policy(v == "kill" ? v1::CHILD_POLICY_KILL : v1::CHILD_POLICY_REPORT);
    else if (name == "capture_sites") options.set_capture_sites(v == "true");
    else if (name == "load_deadline_ms") options.set_load_deadline_ms(number());
    else if (name == "on_load_deadline_ms") options.set_on_load_deadline_ms(number());
    else if (name == "call_deadline_ms") options.set_call_deadline_ms(number());
    else if (name == "before_unload_deadline_ms") options.set_before_unload_deadline_ms(number());
    else if (name == "unload_deadline_ms") options.set_unload_deadline_ms(number());
    return absl::OkStatus();
  }

  absl::Status ParseGroups(const toml::table& groups, RelibdConfig& config) {
    for (auto&& [key, node] : groups) {
      const std::string name(key.str());
      if (!ValidName(name)) {
        return Error(key.source().begin,
                     absl::StrCat("invalid group name '", name, "': use 1-64 characters from [A-Za-z0-9_.-]"));
      }
      if (!node.is_table()) {
        return Error(key.source().begin, absl::StrCat("'groups.", name, "' must be a table ([groups.", name, "])"));
      }
      for (auto&& [option, value] : *node.as_table()) {
        const std::string kind(option.str());
        if (!FindKey(kGroupKeys, kind)) return UnknownKey(option, "groups." + name, KeyNames(kGroupKeys));
        std::string text;
        if (value.is_integer() && value.as_integer()->get() >= 0) {
          text = absl::StrCat(value.as_integer()->get());
        } else if (value.is_string() && !value.as_string()->get().empty()) {
          text = value.as_string()->get();
        } else {
          return Error(value.source().begin, absl::StrCat("'groups.", name, ".", kind,
                                                          "' must be a non-negative integer or a size like \"512M\""));
        }
        config.limits.push_back(FlagSetting{absl::StrCat("groups.", name, ".", kind), "--worker-limit",
                                            absl::StrCat(name, ":", kind, "=", text),
                                            static_cast<int>(option.source().begin.line)});
      }
      config.groups.push_back(GroupConfig{name, static_cast<int>(key.source().begin.line)});
    }
    return absl::OkStatus();
  }

  absl::Status ParseModules(const toml::table& modules, RelibdConfig& config) {
    for (auto&& [key, node] : modules) {
      const std::string name(key.str());
      if (!ValidName(name)) {
        return Error(key.source().begin,
                     absl::StrCat("invalid module name '", name, "': use 1-64 characters from [A-Za-z0-9_.-]"));
      }
      if (!node.is_table()) {
        return Error(key.source().begin,
                     absl::StrCat("'modules.", name, "' must be a table ([modules.", name, "])"));
      }
      ModuleConfig module;
      module.name = name;
      module.line = static_cast<int>(key.source().begin.line);
      module.options = defaults_;
      const std::string section = "modules." + name;
      for (auto&& [option_key, value] : *node.as_table()) {
        const std::string option(option_key.str());
        const std::string full_name = section + "." + option;
        if (const Key* only = FindKey(kModuleOnlyKeys, option)) {
          auto text = Value(*only, value, full_name);
          if (!text.ok()) return text.status();
          if (option == "path") {
            module.path = *text;
          } else if (option == "group") {
            if (!ValidName(*text)) {
              return Error(value.source().begin, absl::StrCat("invalid group name '", *text, "' in '", full_name,
                                                              "': use 1-64 characters from [A-Za-z0-9_.-]"));
            }
            module.group = *text == "default" ? "" : *text;
          } else if (option == "watch") {
            module.watch = *text == "true";
          } else if (absl::Status status = ApplyOption(*only, value, full_name, module.options); !status.ok()) {
            return status;
          }
        } else if (const Key* shared = FindKey(kModuleDefaultKeys, option)) {
          if (absl::Status status = ApplyOption(*shared, value, full_name, module.options); !status.ok()) {
            return status;
          }
        } else {
          return UnknownKey(option_key, section, KeyNames(kModuleOnlyKeys, kModuleDefaultKeys));
        }
      }
      if (module.path.empty()) {
        return Error(key.source().begin, absl::StrCat("module '", name, "' has no path (add path = \"/.../lib",
                                                       name, ".so\" to [modules.", name, "])"));
      }
      config.modules.push_back(std::move(module));
    }
    return absl::OkStatus();
  }

  std::string file_;
  std::filesystem::path base_dir_;
  v1::ModuleOptions defaults_;
};

}  // namespace

absl::StatusOr<RelibdConfig> ParseConfigText(std::string_view text, const std::string& file) {
  return Parser(file).Parse(text);
}

absl::StatusOr<RelibdConfig> ParseConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read the config file: ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfigText(text.str(), path);
}

std::vector<std::string> FlagArguments(const RelibdConfig& config) {
  std::vector<std::string> args;
  for (const auto* settings : {&config.settings, &config.limits}) {
    for (const FlagSetting& setting : *settings) {
      args.push_back(setting.flag);
      args.push_back(setting.value);
    }
  }
  return args;
}

std::string ConfigPathFromArgs(int argc, const char* const* argv) {
  std::string path;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      path = std::string(arg.substr(9));
    } else if (arg == "--") {
      break;
    }
  }
  return path;
}

}  // namespace relib::daemon
