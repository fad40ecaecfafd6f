// relibd's persistent module table: every module's name, group, options,
// path, version and relibd's own copy of that version, kept in the state dir
// so that a restarted relibd (SIGKILL, crash, exit 3, systemd restart, power
// loss) loads them all again.
#ifndef RELIB_DAEMON_MODULE_TABLE_H_
#define RELIB_DAEMON_MODULE_TABLE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/chore_thread.h"
#include "relib/v1/module_table.pb.h"

namespace relib::daemon {

// Table files of two kinds, so that a change costs no fsync while its
// caller waits:
// - `table.next.<generation>.pb`, the table after each change, and each new
//   copy, are written by Put and Remove before they return, into files of
//   new names (no fsync, no rename, no truncation): they are in the page
//   cache, which a crash or kill of relibd does not lose;
// - `table.pb`, written the durable way (copies fsynced, temp file, fsync,
//   rename, fsync of the directory) by a thread of its own right after
//   (`relibd-persist`), which is what a power loss or kernel crash leaves;
//   it then removes the newest-table files it supersedes and the copies no
//   table names.
// Open takes the table of the highest generation that reads whole and, for
// each module whose copy there is missing or shorter than recorded, the
// newest older entry whose copy is whole: a power loss can cost the last
// changes, never a table that does not parse.
// Thread-safe.
class ModuleTable {
 public:
  struct Entry {
    v1::ModuleInfo module;  // name, path, version, options, worker
    std::string copy;       // absolute path of relibd's copy of that version
  };

  // Uses `<state_dir>/modules/` (created, mode 0700) and reads the table
  // found there (see above). Entries whose copy is missing are kept (their
  // restore fails, visibly). Errors: the directory cannot be made; neither
  // table file can be read and parsed though one exists (DATA_LOSS, naming
  // the file).
  static absl::StatusOr<std::unique_ptr<ModuleTable>> Open(const std::string& state_dir);
  // Makes the last change durable first (a table whose Open failed writes
  // nothing).
  ~ModuleTable();

  // Records `module` (its name, path, version, options, worker) with a copy
  // of `file` (the version's bytes), replacing the module's entry. On error
  // the entry stays as it was. Durable soon after it returns (see above).
  absl::Status Put(const v1::ModuleInfo& module, const std::string& file);
  // Forgets the module; its copy goes once no table file names it. No error
  // if it was not there.
  absl::Status Remove(const std::string& name);
  // All entries, by name.
  std::vector<Entry> Entries() const;
  const std::string& directory() const { return dir_; }
  // Blocks until every change made so far is durable. Errors: the durable
  // write's.
  absl::Status Flush();

 private:
  explicit ModuleTable(std::string dir) : dir_(std::move(dir)) {}
  // Writes the newest table (no fsync). REQUIRES: mutex_ held.
  absl::Status WriteNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Posts a durable write unless one is already posted.
  void ScheduleDurable() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The durable write of the table as it is now, then the removal of copies
  // no table file names any more. Runs on persist_ (or in Flush).
  absl::Status WriteDurable() ABSL_LOCKS_EXCLUDED(mutex_);

  const std::string dir_;
  mutable std::mutex mutex_;
  std::map<std::string, v1::ModuleTableEntry> entries_ ABSL_GUARDED_BY(mutex_);
  uint64_t generation_ ABSL_GUARDED_BY(mutex_) = 0;
  bool durable_posted_ ABSL_GUARDED_BY(mutex_) = false;
  // Copy files in the directory, and those of them already fsynced.
  std::set<std::string> copies_ ABSL_GUARDED_BY(mutex_);
  // Generations of the newest-table files in the directory.
  std::set<uint64_t> next_files_ ABSL_GUARDED_BY(mutex_);
  // Set once Open has read the directory: until then nothing is written or
  // removed (a refused start leaves the directory as it found it).
  bool opened_ ABSL_GUARDED_BY(mutex_) = false;
  std::set<std::string> synced_copies_ ABSL_GUARDED_BY(mutex_);
  // The generation table.pb holds (none yet: the maximum).
  uint64_t durable_generation_ ABSL_GUARDED_BY(durable_mutex_) = UINT64_MAX;
  // Serializes durable writes (the thread's and Flush's).
  std::mutex durable_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  // Last: destroyed first, so a queued durable write still finds the table.
  common::ChoreThread persist_{"relibd-persist"};
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_MODULE_TABLE_H_
