#include "common/flight_recorder.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <new>

#include "boost/interprocess/mapped_region.hpp"
#include "boost/interprocess/shared_memory_object.hpp"

namespace relib::common {
namespace bip = boost::interprocess;

struct FlightRecorder::Mapping {
  bip::shared_memory_object object;
  bip::mapped_region region;
  // OpenFd maps the handed-over fd directly instead.
  void* raw = nullptr;
  ~Mapping() {
    if (raw != nullptr) ::munmap(raw, sizeof(FlightRecord));
  }
};

namespace {

template <size_t N>
void CopyName(char (&to)[N], const char* from) {
  size_t n = 0;
  for (; from && from[n] && n + 1 < sizeof(to); ++n) to[n] = from[n];
  to[n] = '\0';
}

}  // namespace

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kIdle: return "idle";
    case Phase::kLoad: return "load";
    case Phase::kOnLoad: return "on_load";
    case Phase::kCall: return "call";
    case Phase::kBeforeUnload: return "before_unload";
    case Phase::kUnloadChecks: return "unload";
  }
  return "unknown";
}

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

FlightRecorder::FlightRecorder(std::string name, bool owner, std::unique_ptr<Mapping> mapping)
    : name_(std::move(name)), owner_(owner), mapping_(std::move(mapping)) {}

FlightRecorder::FlightRecorder(FlightRecorder&& other) noexcept
    : name_(std::move(other.name_)), owner_(std::exchange(other.owner_, false)), mapping_(std::move(other.mapping_)) {}

FlightRecorder& FlightRecorder::operator=(FlightRecorder&& other) noexcept {
  if (this != &other) {
    FlightRecorder discard(std::move(*this));
    name_ = std::move(other.name_);
    owner_ = std::exchange(other.owner_, false);
    mapping_ = std::move(other.mapping_);
  }
  return *this;
}

FlightRecorder::~FlightRecorder() {
  mapping_.reset();
  if (owner_) bip::shared_memory_object::remove(name_.c_str());
}

absl::StatusOr<FlightRecorder> FlightRecorder::Create(const std::string& name) {
  try {
    bip::shared_memory_object::remove(name.c_str());
    auto mapping = std::make_unique<Mapping>();
    mapping->object = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write,
                                                bip::permissions(0600));
    mapping->object.truncate(sizeof(FlightRecord));
    mapping->region = bip::mapped_region(mapping->object, bip::read_write);
    auto* record = new (mapping->region.get_address()) FlightRecord();
    record->magic = FlightRecord::kMagic;
    return FlightRecorder(name, true, std::move(mapping));
  } catch (const bip::interprocess_exception& e) {
    return absl::InternalError(std::string("cannot create flight recorder ") + name + ": " + e.what());
  }
}

absl::StatusOr<FlightRecorder> FlightRecorder::Open(const std::string& name) {
  try {
    auto mapping = std::make_unique<Mapping>();
    mapping->object = bip::shared_memory_object(bip::open_only, name.c_str(), bip::read_write);
    mapping->region = bip::mapped_region(mapping->object, bip::read_write);
    if (mapping->region.get_size() < sizeof(FlightRecord) ||
        static_cast<FlightRecord*>(mapping->region.get_address())->magic != FlightRecord::kMagic) {
      return absl::InvalidArgumentError("flight recorder " + name + " has the wrong layout");
    }
    return FlightRecorder(name, false, std::move(mapping));
  } catch (const bip::interprocess_exception& e) {
    return absl::InternalError(std::string("cannot open flight recorder ") + name + ": " + e.what());
  }
}

absl::StatusOr<FlightRecorder> FlightRecorder::OpenFd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int saved = errno;
    ::close(fd);
    return absl::ErrnoToStatus(saved, "flight recorder fd");
  }
  if (st.st_size < static_cast<off_t>(sizeof(FlightRecord))) {
    ::close(fd);
    return absl::InvalidArgumentError("flight recorder fd has the wrong size");
  }
  void* raw = ::mmap(nullptr, sizeof(FlightRecord), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int saved = errno;
  ::close(fd);  // the mapping keeps the segment
  if (raw == MAP_FAILED) return absl::ErrnoToStatus(saved, "mmap flight recorder");
  auto mapping = std::make_unique<Mapping>();
  mapping->raw = raw;
  if (static_cast<FlightRecord*>(raw)->magic != FlightRecord::kMagic) {
    return absl::InvalidArgumentError("flight recorder fd has the wrong layout");
  }
  return FlightRecorder("fd", false, std::move(mapping));
}

int FlightRecorder::fd() const { return mapping_ ? mapping_->object.get_mapping_handle().handle : -1; }

FlightRecord* FlightRecorder::record() const {
  if (!mapping_) return nullptr;
  if (mapping_->raw != nullptr) return static_cast<FlightRecord*>(mapping_->raw);
  return static_cast<FlightRecord*>(mapping_->region.get_address());
}

void FlightRecorder::EnterPhase(Phase phase, const std::string& module, const std::string& detail) {
  FlightRecord* r = record();
  r->sequence.fetch_add(1, std::memory_order_acq_rel);  // odd: writing
  CopyName(r->module, module.c_str());
  CopyName(r->detail, detail.c_str());
  r->phase_started_ns.store(MonotonicNanos(), std::memory_order_relaxed);
  r->phase.store(static_cast<uint32_t>(phase), std::memory_order_relaxed);
  r->sequence.fetch_add(1, std::memory_order_acq_rel);  // even: stable
}

void FlightRecorder::LeaveToIdle() { EnterPhase(Phase::kIdle, "", ""); }

int FlightRecorder::BeginCall(uint64_t call_id, const std::string& module, const std::string& export_name,
                              uint32_t deadline_ms) {
  FlightRecord* r = record();
  // Start the search at a spot that depends on the thread, so concurrent
  // calls rarely contend for the same slot.
  static std::atomic<uint32_t> next_start{0};
  thread_local uint32_t start = next_start.fetch_add(7, std::memory_order_relaxed);
  for (int i = 0; i < FlightRecord::kCallSlots; ++i) {
    int index = static_cast<int>((start + i) % FlightRecord::kCallSlots);
    CallSlot& slot = r->calls[index];
    uint32_t expected = 0;
    if (slot.busy.load(std::memory_order_relaxed) != 0 ||
        !slot.busy.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
      continue;
    }
    slot.sequence.fetch_add(1, std::memory_order_acq_rel);  // odd: writing
    CopyName(slot.module, module.c_str());
    CopyName(slot.export_name, export_name.c_str());
    slot.started_ns.store(MonotonicNanos(), std::memory_order_relaxed);
    slot.deadline_ms.store(deadline_ms, std::memory_order_relaxed);
    slot.call_id.store(call_id == 0 ? ~uint64_t{0} : call_id, std::memory_order_relaxed);
    slot.sequence.fetch_add(1, std::memory_order_acq_rel);  // even: stable
    r->calls_in_flight.fetch_add(1, std::memory_order_release);
    return index;
  }
  return -1;
}

void FlightRecorder::EndCall(int index) {
  if (index < 0 || index >= FlightRecord::kCallSlots) return;
  FlightRecord* r = record();
  CallSlot& slot = r->calls[index];
  slot.sequence.fetch_add(1, std::memory_order_acq_rel);
  slot.call_id.store(0, std::memory_order_relaxed);
  slot.sequence.fetch_add(1, std::memory_order_acq_rel);
  r->calls_in_flight.fetch_sub(1, std::memory_order_release);
  slot.busy.store(0, std::memory_order_release);
}

void FlightRecorder::RecordCrash(FlightRecord* record, int signal, const char* module, const char* note) {
  if (record == nullptr) return;
  CopyName(record->crash_module, module);
  CopyName(record->crash_note, note);
  record->crash_signal.store(signal, std::memory_order_release);
}

FlightSnapshot FlightRecorder::Read(bool with_calls) const {
  FlightSnapshot snapshot;
  FlightRecord* r = record();
  for (int attempt = 0; attempt < 100; ++attempt) {
    uint32_t before = r->sequence.load(std::memory_order_acquire);
    if (before & 1) continue;
    snapshot.phase = static_cast<Phase>(r->phase.load(std::memory_order_relaxed));
    snapshot.phase_started_ns = r->phase_started_ns.load(std::memory_order_relaxed);
    snapshot.module.assign(r->module, strnlen(r->module, sizeof(r->module)));
    snapshot.detail.assign(r->detail, strnlen(r->detail, sizeof(r->detail)));
    if (r->sequence.load(std::memory_order_acquire) == before) break;
  }
  snapshot.heartbeat = r->heartbeat.load(std::memory_order_relaxed);
  snapshot.crash_signal = r->crash_signal.load(std::memory_order_acquire);
  if (snapshot.crash_signal != 0) {
    snapshot.crash_module.assign(r->crash_module, strnlen(r->crash_module, sizeof(r->crash_module)));
    snapshot.crash_note.assign(r->crash_note, strnlen(r->crash_note, sizeof(r->crash_note)));
  }
  if (!with_calls || r->calls_in_flight.load(std::memory_order_acquire) <= 0) return snapshot;
  for (CallSlot& slot : r->calls) {
    if (slot.call_id.load(std::memory_order_relaxed) == 0) continue;
    CallSnapshot call;
    bool stable = false;
    for (int attempt = 0; attempt < 100 && !stable; ++attempt) {
      uint32_t before = slot.sequence.load(std::memory_order_acquire);
      if (before & 1) continue;
      call.call_id = slot.call_id.load(std::memory_order_relaxed);
      call.started_ns = slot.started_ns.load(std::memory_order_relaxed);
      call.deadline_ms = slot.deadline_ms.load(std::memory_order_relaxed);
      call.module.assign(slot.module, strnlen(slot.module, sizeof(slot.module)));
      call.export_name.assign(slot.export_name, strnlen(slot.export_name, sizeof(slot.export_name)));
      stable = slot.sequence.load(std::memory_order_acquire) == before;
    }
    if (stable && call.call_id != 0) snapshot.calls.push_back(std::move(call));
  }
  std::sort(snapshot.calls.begin(), snapshot.calls.end(),
            [](const CallSnapshot& a, const CallSnapshot& b) { return a.started_ns < b.started_ns; });
  return snapshot;
}

}  // namespace relib::common
