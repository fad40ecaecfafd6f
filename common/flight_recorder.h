// The flight recorder: a small shared-memory record the worker keeps current
// (which module, which control phase, since when; every executing call with
// its module, export, start and deadline; a heartbeat; the module a fatal
// signal hit) so relibd knows what a dead or hung worker was doing — the dead
// cannot report themselves. relibd creates and owns the segment; the worker
// only writes plain atomics into it, so a worker dying mid-write never leaves
// a lock held.
#ifndef RELIB_COMMON_FLIGHT_RECORDER_H_
#define RELIB_COMMON_FLIGHT_RECORDER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace relib::common {

enum class Phase : uint32_t {
  kIdle = 0,
  kLoad = 1,          // copy, dlopen, static constructors, descriptor checks
  kOnLoad = 2,
  kCall = 3,
  kBeforeUnload = 4,
  kUnloadChecks = 5,  // thread grace, TLS destructors, fds, dlclose, unmap proof
};
const char* PhaseName(Phase phase);

// One executing export call. Written only by the worker thread running the
// call; guarded by its own seqlock (`sequence` odd while written).
struct CallSlot {
  std::atomic<uint32_t> busy;         // claimed by a running call (worker side)
  std::atomic<uint32_t> sequence;
  std::atomic<uint64_t> call_id;      // the link command id; 0 = free
  std::atomic<int64_t> started_ns;    // CLOCK_MONOTONIC, when the call started running
  std::atomic<uint32_t> deadline_ms;  // 0 = none
  char module[64];
  char export_name[64];
};

// Layout in shared memory. Strings are guarded by a seqlock (`sequence` odd
// while the worker writes them).
struct FlightRecord {
  // More calls than this at once run untracked (relibd's backstop timer
  // still bounds them).
  static constexpr int kCallSlots = 128;
  static constexpr uint32_t kMagic = 0x52454c42;  // "RELB"
  std::atomic<uint32_t> magic;
  std::atomic<uint32_t> sequence;
  std::atomic<uint64_t> heartbeat;          // advanced every 10 ms by a worker thread
  std::atomic<uint32_t> phase;              // Phase
  std::atomic<int64_t> phase_started_ns;    // CLOCK_MONOTONIC
  char module[64];                          // module of the current phase
  char detail[64];                          // export name for kCall
  std::atomic<int32_t> crash_signal;        // set by the worker's fatal-signal handler
  char crash_module[64];                    // module the crashing thread was running
  char crash_note[192];                     // why it died, if the worker knew (an invalid free...)
  std::atomic<int32_t> calls_in_flight;     // slots in use (a hint: lets readers skip the scan)
  CallSlot calls[kCallSlots];
};

struct CallSnapshot {
  uint64_t call_id = 0;
  int64_t started_ns = 0;
  uint32_t deadline_ms = 0;
  std::string module;
  std::string export_name;
};

struct FlightSnapshot {
  uint64_t heartbeat = 0;
  Phase phase = Phase::kIdle;
  int64_t phase_started_ns = 0;
  std::string module;
  std::string detail;
  int crash_signal = 0;
  std::string crash_module;
  std::string crash_note;
  std::vector<CallSnapshot> calls;  // executing calls, oldest first
};

int64_t MonotonicNanos();

// One mapping of a flight record segment. Move-only.
class FlightRecorder {
 public:
  // relibd: creates a new named segment (removed when this object dies).
  static absl::StatusOr<FlightRecorder> Create(const std::string& name);
  // The worker: maps an existing segment.
  static absl::StatusOr<FlightRecorder> Open(const std::string& name);
  // The worker: maps the segment relibd handed over as `fd` (takes it). A
  // worker running as another user cannot open relibd's 0600 segment by
  // name; the fd is the only way in.
  static absl::StatusOr<FlightRecorder> OpenFd(int fd);

  FlightRecorder(FlightRecorder&&) noexcept;
  FlightRecorder& operator=(FlightRecorder&&) noexcept;
  ~FlightRecorder();

  FlightRecord* record() const;
  const std::string& name() const { return name_; }
  // relibd: the segment's fd, to hand to the worker (owned by this object).
  int fd() const;

  // Worker side. Not async-signal-safe except RecordCrash.
  void EnterPhase(Phase phase, const std::string& module, const std::string& detail);
  void LeaveToIdle();
  // Thread-safe. Records a call starting now on the calling thread; returns
  // its slot (-1 if every slot is taken: the call then runs untracked).
  int BeginCall(uint64_t call_id, const std::string& module, const std::string& export_name,
                uint32_t deadline_ms);
  // Frees what BeginCall returned (-1 is ignored).
  void EndCall(int slot);
  // Async-signal-safe. `note` may be null.
  static void RecordCrash(FlightRecord* record, int signal, const char* module, const char* note = nullptr);

  // Daemon side: a consistent copy (calls included when `with_calls`).
  FlightSnapshot Read(bool with_calls = true) const;

 private:
  struct Mapping;
  FlightRecorder(std::string name, bool owner, std::unique_ptr<Mapping> mapping);
  std::string name_;
  bool owner_ = false;
  std::unique_ptr<Mapping> mapping_;
};

}  // namespace relib::common

#endif  // RELIB_COMMON_FLIGHT_RECORDER_H_
