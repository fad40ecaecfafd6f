// Loads, calls and unloads relib modules inside the worker process.
#ifndef RELIB_AGENT_MODULE_LOADER_H_
#define RELIB_AGENT_MODULE_LOADER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace relib::agent {

struct LoadInfo {
  std::string descriptor_name;
  std::vector<std::string> exports;
  std::vector<std::string> warnings;
  int64_t load_micros = 0;
};

// What unloading one version found. Grows with each check the agent learns.
struct UnloadReport {
  std::string name;
  uint64_t version = 0;
  std::string path;  // the original path the version was loaded from
  bool unmapped = false;
  std::vector<std::string> remaining_mappings;
  std::string before_unload_error;
  bool before_unload_missing = false;
  int64_t before_unload_micros = 0;
  int64_t unload_micros = 0;
};

struct ReloadOutcome {
  UnloadReport report;
  LoadInfo load;
};

// Module log sink: (spdlog level, module name, text). Must be thread-safe.
using ModuleLogFn = std::function<void(int level, const std::string& module, std::string_view text)>;

// Owns every module loaded in this process. Each load copies the file into
// `scratch_dir` under a name never used before in this process, so the
// original may be overwritten at any time and dlopen never returns a cached
// old copy. Not thread-safe: one thread issues all commands (which is also the
// ABI's promise to modules).
class ModuleLoader {
 public:
  ModuleLoader(std::string scratch_dir, ModuleLogFn log);
  ~ModuleLoader();  // unloads everything still loaded, without checks
  ModuleLoader(const ModuleLoader&) = delete;
  ModuleLoader& operator=(const ModuleLoader&) = delete;

  // Errors: ALREADY_EXISTS (name taken), NOT_FOUND (no file), INVALID_ARGUMENT
  // (not an ELF shared object, dlopen failure, no descriptor),
  // FAILED_PRECONDITION (ABI mismatch, on_load failed). Nothing stays loaded
  // on error.
  absl::StatusOr<LoadInfo> Load(const std::string& name, const std::string& path, uint64_t version);

  // before_unload, dlclose, verify unmapping. Errors: NOT_FOUND (not loaded);
  // FAILED_PRECONDITION if before_unload failed and !force (module stays).
  absl::StatusOr<UnloadReport> Unload(const std::string& name, bool force);

  // Opens and checks the new file first (a bad file leaves the old version
  // untouched), then unloads the old version and runs the new on_load. If
  // that fails the old version is loaded again and the error says so; if even
  // that fails the module is gone and the error says that too.
  // `report_out` receives the unload report whenever the old version was unloaded.
  absl::StatusOr<ReloadOutcome> Reload(const std::string& name, const std::string& path,
                                       uint64_t version, bool force, UnloadReport* report_out);

  // Calls an export. Errors: NOT_FOUND (module or export), UNKNOWN (the
  // export returned an error code; the message holds its text).
  absl::StatusOr<std::string> Call(const std::string& name, const std::string& export_name,
                                   std::string_view input);

  bool IsLoaded(const std::string& name) const { return modules_.count(name) != 0; }

 private:
  struct Module;

  // dlopen + descriptor + ABI checks, no on_load.
  absl::StatusOr<std::unique_ptr<Module>> Open(const std::string& name, const std::string& path,
                                               uint64_t version);
  absl::Status RunOnLoad(Module& module);
  // before_unload (fills report); FAILED_PRECONDITION if it failed and !force.
  absl::Status RunBeforeUnload(Module& module, bool force, UnloadReport& report);
  // dlclose + mapping check; keeps the copy file if `keep_copy`.
  void CloseAndVerify(Module& module, UnloadReport& report, bool keep_copy);
  LoadInfo Describe(const Module& module, int64_t load_micros) const;

  std::string scratch_dir_;
  ModuleLogFn log_;
  uint64_t next_copy_id_ = 1;
  std::map<std::string, std::unique_ptr<Module>> modules_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_MODULE_LOADER_H_
