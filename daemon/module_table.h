// relibd's persistent module table: every module's name, group, options,
// path, version and relibd's own copy of that version, kept in the state dir
// so that a restarted relibd (SIGKILL, crash, exit 3, systemd restart) loads
// them all again. Each change is written atomically (temp file, fsync,
// rename, fsync of the directory): a crash leaves the old table or the new.
#ifndef RELIB_DAEMON_MODULE_TABLE_H_
#define RELIB_DAEMON_MODULE_TABLE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "relib/v1/module_table.pb.h"

namespace relib::daemon {

// Thread-safe.
class ModuleTable {
 public:
  struct Entry {
    v1::ModuleInfo module;  // name, path, version, options, worker
    std::string copy;       // absolute path of relibd's copy of that version
  };

  // Uses `<state_dir>/modules/` (created, mode 0700) and reads the table
  // found there. Entries whose copy is missing are kept (their restore
  // fails, visibly). Errors: the directory cannot be made; the table file
  // exists but cannot be read or parsed (DATA_LOSS, naming the file).
  static absl::StatusOr<std::unique_ptr<ModuleTable>> Open(const std::string& state_dir);

  // Records `module` (its name, path, version, options, worker) with a copy
  // of `file` (the version's bytes), replacing the module's entry; the old
  // entry's copy is removed once the new table is on disk. On error the old
  // entry stays as it was.
  absl::Status Put(const v1::ModuleInfo& module, const std::string& file);
  // Forgets the module and removes its copy. No error if it was not there.
  absl::Status Remove(const std::string& name);
  // All entries, by name.
  std::vector<Entry> Entries() const;
  const std::string& directory() const { return dir_; }

 private:
  explicit ModuleTable(std::string dir) : dir_(std::move(dir)) {}
  // Writes the whole table. REQUIRES: mutex_ held.
  absl::Status Save() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::string dir_;
  mutable std::mutex mutex_;
  std::map<std::string, v1::ModuleTableEntry> entries_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_MODULE_TABLE_H_
