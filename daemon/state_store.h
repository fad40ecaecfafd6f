// Module state owned by relibd: a Boost.Interprocess managed segment holding
// (module, key) -> bytes. It lives in the daemon, so a worker crash cannot
// touch it; backed by a file in --state-dir it also survives relibd restarts,
// otherwise by a shared-memory segment removed when relibd exits.
#ifndef RELIB_DAEMON_STATE_STORE_H_
#define RELIB_DAEMON_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace relib::daemon {

// Default of relibd --state-store-mb.
inline constexpr int kDefaultStateStoreMb = 64;

// Thread-safe. Only relibd maps the segment.
class StateStore {
 public:
  // `state_dir` empty: anonymous per-daemon segment in /dev/shm. The segment
  // is `capacity_bytes` large, its space reserved at once (FAILED_PRECONDITION
  // if the file system cannot give it); an existing --state-dir file that is
  // smaller is grown, a larger one is kept as it is. One module's entries
  // together never exceed `max_module_bytes` (what one load command carries).
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& state_dir, uint64_t capacity_bytes,
                                                          uint64_t max_module_bytes);
  ~StateStore();

  // Stores `value` under (module, key), replacing the key's value; on any
  // error the previous value stays. RESOURCE_EXHAUSTED, naming the module,
  // key, size and capacity, when the segment has no room or the module's
  // entries would exceed `max_module_bytes`. Never throws.
  absl::Status Put(const std::string& module, const std::string& key, const std::string& value);
  std::map<std::string, std::string> Get(const std::string& module) const;
  void Erase(const std::string& module);
  // Where the bytes live (for logs).
  const std::string& location() const { return location_; }
  // Size of the segment in bytes.
  uint64_t capacity() const;

 private:
  struct Segment;
  StateStore(std::string location, bool remove_on_exit, std::unique_ptr<Segment> segment, uint64_t max_module_bytes);
  std::string location_;
  bool remove_on_exit_;
  const uint64_t max_module_bytes_;
  mutable std::mutex mutex_;
  std::unique_ptr<Segment> segment_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_STATE_STORE_H_
