// Module state owned by relibd: a Boost.Interprocess managed segment holding
// (module, key) -> bytes. It lives in the daemon, so a worker crash cannot
// touch it; backed by a file in --state-dir it also survives relibd restarts,
// otherwise by a shared-memory segment removed when relibd exits.
#ifndef RELIB_DAEMON_STATE_STORE_H_
#define RELIB_DAEMON_STATE_STORE_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace relib::daemon {

// Thread-safe. Only relibd maps the segment.
class StateStore {
 public:
  // `state_dir` empty: anonymous per-daemon segment in /dev/shm.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& state_dir, size_t capacity_bytes);
  ~StateStore();

  // RESOURCE_EXHAUSTED when the segment is full.
  absl::Status Put(const std::string& module, const std::string& key, const std::string& value);
  std::map<std::string, std::string> Get(const std::string& module) const;
  void Erase(const std::string& module);
  // Where the bytes live (for logs).
  const std::string& location() const { return location_; }

 private:
  struct Segment;
  StateStore(std::string location, bool remove_on_exit, std::unique_ptr<Segment> segment);
  std::string location_;
  bool remove_on_exit_;
  mutable std::mutex mutex_;
  std::unique_ptr<Segment> segment_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_STATE_STORE_H_
