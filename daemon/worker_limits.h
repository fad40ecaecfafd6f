// Resource limits of worker processes, per isolation group (--worker-limit
// GROUP:KIND=VALUE): parsed once, applied as rlimits at spawn, and used to
// explain a worker's death by one of them.
#ifndef RELIB_DAEMON_WORKER_LIMITS_H_
#define RELIB_DAEMON_WORKER_LIMITS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/child_process.h"

namespace relib::daemon {

struct WorkerLimits {
  std::optional<uint64_t> memory_bytes;  // RLIMIT_AS: address space
  std::optional<uint64_t> data_bytes;    // RLIMIT_DATA: heap and private mappings
  std::optional<uint64_t> open_files;    // RLIMIT_NOFILE
  std::optional<uint64_t> processes;     // RLIMIT_NPROC (counts the worker user's processes)
  std::optional<uint64_t> cpu_seconds;   // RLIMIT_CPU: SIGXCPU at the limit, SIGKILL 2 s later
  uint64_t core_bytes = 0;               // RLIMIT_CORE: core dumps off unless asked for

  bool operator==(const WorkerLimits&) const = default;

  // As SpawnOptions::rlimits.
  std::vector<std::pair<int, std::pair<uint64_t, uint64_t>>> ToRlimits() const;
  // Why a worker with these limits that ended as `status` died, if a limit
  // explains it: "exceeded its CPU time limit of 2 s". `peak_address_space`
  // is the largest address-space size relibd saw the worker use (0 unknown).
  // Empty when no limit explains it.
  std::string ExplainDeath(const common::ExitStatus& status, uint64_t peak_address_space) const;
};

// --worker-limit values by group; "*" applies to every group, a named group's
// own values override it kind by kind.
class WorkerLimitTable {
 public:
  // Parses "GROUP:KIND=VALUE" with KIND one of memory, data, nofile, nproc,
  // cpu, core and VALUE a number with an optional K/M/G suffix (bytes) or
  // seconds for cpu, or "unlimited" (core only). INVALID_ARGUMENT naming the
  // flag otherwise.
  absl::Status Add(const std::string& flag);
  WorkerLimits For(const std::string& group) const;
  // The "*" values alone: what a group with no values of its own gets (and
  // what a spare worker, which serves no group yet, is started with).
  WorkerLimits Common() const;
  // Whether any group (or "*") limits processes: a spare worker would count
  // against such a limit (RLIMIT_NPROC counts the user's processes).
  bool LimitsProcesses() const;

 private:
  // "*" merged with `group`'s own values (none when null).
  WorkerLimits Merged(const std::string* group) const;

  std::map<std::string, std::map<std::string, uint64_t>> values_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_WORKER_LIMITS_H_
