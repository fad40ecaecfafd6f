#include "daemon/state_store.h"

#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "boost/interprocess/allocators/allocator.hpp"
#include "boost/interprocess/containers/map.hpp"
#include "boost/interprocess/containers/string.hpp"
#include "boost/interprocess/managed_mapped_file.hpp"

namespace relib::daemon {
namespace bip = boost::interprocess;

namespace {
using Manager = bip::managed_mapped_file::segment_manager;
using CharAllocator = bip::allocator<char, Manager>;
using SegmentString = bip::basic_string<char, std::char_traits<char>, CharAllocator>;
using Entry = std::pair<const SegmentString, SegmentString>;
using EntryAllocator = bip::allocator<Entry, Manager>;
using SegmentMap = bip::map<SegmentString, SegmentString, std::less<SegmentString>, EntryAllocator>;

// Keys are "<module>\0<key>" so one module's entries are contiguous.
std::string Prefix(const std::string& module) { return module + std::string(1, '\0'); }
}  // namespace

struct StateStore::Segment {
  bip::managed_mapped_file file;
  SegmentMap* map = nullptr;
};

StateStore::StateStore(std::string location, bool remove_on_exit, std::unique_ptr<Segment> segment)
    : location_(std::move(location)), remove_on_exit_(remove_on_exit), segment_(std::move(segment)) {}

StateStore::~StateStore() {
  segment_.reset();
  if (remove_on_exit_) {
    std::error_code ignored;
    std::filesystem::remove(location_, ignored);
  }
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& state_dir, size_t capacity_bytes) {
  bool persistent = !state_dir.empty();
  std::string location =
      persistent ? state_dir + "/module-state.bin" : absl::StrCat("/dev/shm/relibd.", ::getpid(), ".state");
  try {
    if (persistent) {
      std::error_code error;
      std::filesystem::create_directories(state_dir, error);
      if (error) return absl::FailedPreconditionError("cannot create --state-dir " + state_dir + ": " + error.message());
    } else {
      bip::file_mapping::remove(location.c_str());
    }
    auto segment = std::make_unique<Segment>();
    segment->file = bip::managed_mapped_file(bip::open_or_create, location.c_str(), capacity_bytes);
    segment->map = segment->file.find_or_construct<SegmentMap>("relib-module-state")(
        std::less<SegmentString>(), segment->file.get_segment_manager());
    return std::unique_ptr<StateStore>(new StateStore(location, !persistent, std::move(segment)));
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError("cannot open the state store " + location + ": " + e.what());
  }
}

absl::Status StateStore::Put(const std::string& module, const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    CharAllocator allocator(segment_->file.get_segment_manager());
    SegmentString full_key((Prefix(module) + key).c_str(), Prefix(module).size() + key.size(), allocator);
    SegmentString bytes(value.data(), value.size(), allocator);
    auto it = segment_->map->find(full_key);
    if (it != segment_->map->end()) {
      it->second = bytes;
    } else {
      segment_->map->emplace(full_key, bytes);
    }
    return absl::OkStatus();
  } catch (const bip::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("state store full saving ", module, "/", key));
  }
}

std::map<std::string, std::string> StateStore::Get(const std::string& module) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, std::string> state;
  std::string prefix = Prefix(module);
  CharAllocator allocator(segment_->file.get_segment_manager());
  SegmentString start(prefix.data(), prefix.size(), allocator);
  for (auto it = segment_->map->lower_bound(start); it != segment_->map->end(); ++it) {
    std::string key(it->first.data(), it->first.size());
    if (key.compare(0, prefix.size(), prefix) != 0) break;
    state[key.substr(prefix.size())] = std::string(it->second.data(), it->second.size());
  }
  return state;
}

void StateStore::Erase(const std::string& module) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string prefix = Prefix(module);
  CharAllocator allocator(segment_->file.get_segment_manager());
  SegmentString start(prefix.data(), prefix.size(), allocator);
  auto it = segment_->map->lower_bound(start);
  while (it != segment_->map->end() && std::string(it->first.data(), it->first.size()).compare(0, prefix.size(), prefix) == 0) {
    it = segment_->map->erase(it);
  }
}

}  // namespace relib::daemon
