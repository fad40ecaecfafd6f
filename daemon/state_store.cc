#include "daemon/state_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "common/log_text.h"
#include "common/unique_fd.h"
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

// What one entry costs a load command besides its bytes (tags, lengths).
constexpr uint64_t kEntryOverheadBytes = 32;

// Reserves the file's blocks now: a full file system then fails the start,
// not a later write into the mapping (SIGBUS).
absl::Status Reserve(const std::string& location, uint64_t bytes) {
  common::UniqueFd fd(::open(location.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "open " + location);
  int rc = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes));
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot reserve ", bytes, " bytes for the state store ", location, ": ", std::strerror(rc),
                     " (lower relibd --state-store-mb or free space)"));
  }
  return absl::OkStatus();
}
// An existing state file must be relibd's own (whoever else owns it could
// read or plant state) and is made 0600 if it was not.
absl::Status MakePrivate(const std::string& location) {
  common::UniqueFd fd(::open(location.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return errno == ENOENT ? absl::OkStatus() : absl::ErrnoToStatus(errno, "open " + location);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return absl::ErrnoToStatus(errno, "stat " + location);
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat("the state store ", location, " is owned by uid ", st.st_uid,
                                                      ", not relibd's uid ", ::geteuid(),
                                                      "; remove it or give it to relibd's user"));
  }
  if ((st.st_mode & 07777) != 0600 && ::fchmod(fd.get(), 0600) != 0) {
    return absl::ErrnoToStatus(errno, "chmod 0600 " + location);
  }
  return absl::OkStatus();
}

}  // namespace

struct StateStore::Segment {
  bip::managed_mapped_file file;
  SegmentMap* map = nullptr;
};

StateStore::StateStore(std::string location, bool remove_on_exit, std::unique_ptr<Segment> segment,
                       uint64_t max_module_bytes)
    : location_(std::move(location)),
      remove_on_exit_(remove_on_exit),
      max_module_bytes_(max_module_bytes),
      segment_(std::move(segment)) {}

StateStore::~StateStore() {
  segment_.reset();
  if (remove_on_exit_) {
    std::error_code ignored;
    std::filesystem::remove(location_, ignored);
  }
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& state_dir, uint64_t capacity_bytes,
                                                             uint64_t max_module_bytes) {
  bool persistent = !state_dir.empty();
  std::string location =
      persistent ? state_dir + "/module-state.bin" : absl::StrCat("/dev/shm/relibd.", ::getpid(), ".state");
  try {
    if (persistent) {
      std::error_code error;
      // A directory relibd creates is relibd's alone; an existing one keeps
      // the mode the operator gave it (the file itself is 0600 either way).
      if (std::filesystem::create_directories(state_dir, error)) ::chmod(state_dir.c_str(), 0700);
      if (error) return absl::FailedPreconditionError("cannot create --state-dir " + state_dir + ": " + error.message());
      if (absl::Status owned = MakePrivate(location); !owned.ok()) return owned;
      uint64_t existing = std::filesystem::exists(location) ? std::filesystem::file_size(location) : 0;
      if (existing > 0 && existing < capacity_bytes &&
          !bip::managed_mapped_file::grow(location.c_str(), capacity_bytes - existing)) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot grow the state store ", location, " to ", capacity_bytes, " bytes"));
      }
    } else {
      bip::file_mapping::remove(location.c_str());
    }
    auto segment = std::make_unique<Segment>();
    // Module state may hold secrets: only relibd's user may read it.
    segment->file = bip::managed_mapped_file(bip::open_or_create, location.c_str(), capacity_bytes, nullptr,
                                             bip::permissions(0600));
    if (absl::Status owned = MakePrivate(location); !owned.ok()) return owned;
    if (absl::Status reserved = Reserve(location, segment->file.get_size()); !reserved.ok()) {
      segment.reset();
      if (!persistent) bip::file_mapping::remove(location.c_str());
      return reserved;
    }
    segment->map = segment->file.find_or_construct<SegmentMap>("relib-module-state")(
        std::less<SegmentString>(), segment->file.get_segment_manager());
    return std::unique_ptr<StateStore>(new StateStore(location, !persistent, std::move(segment), max_module_bytes));
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError("cannot open the state store " + location + ": " + e.what());
  }
}

uint64_t StateStore::capacity() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return segment_->file.get_size();
}

absl::Status StateStore::Put(const std::string& module, const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t capacity = segment_->file.get_size();
  auto describe = [&] {
    return absl::StrCat("module '", module, "' key '", common::EscapeForLog(key, 64), "' (", value.size(), " bytes)");
  };
  try {
    // What the module's other entries take already.
    const std::string prefix = Prefix(module);
    CharAllocator allocator(segment_->file.get_segment_manager());
    uint64_t module_bytes = 0;
    SegmentString start(prefix.data(), prefix.size(), allocator);
    for (auto it = segment_->map->lower_bound(start); it != segment_->map->end(); ++it) {
      std::string_view full(it->first.data(), it->first.size());
      if (full.compare(0, prefix.size(), prefix) != 0) break;
      if (full.substr(prefix.size()) == key) continue;
      module_bytes += full.size() - prefix.size() + it->second.size() + kEntryOverheadBytes;
    }
    const uint64_t entry_bytes = key.size() + value.size() + kEntryOverheadBytes;
    if (module_bytes + entry_bytes > max_module_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "state store refuses ", describe(), ": the module's state would take ", module_bytes + entry_bytes,
          " bytes, more than the ", max_module_bytes_,
          " bytes one load command can carry to a worker (relibd --max-message-mb)"));
    }
    std::string full_key = prefix + key;
    SegmentString segment_key(full_key.data(), full_key.size(), allocator);
    SegmentString bytes(value.data(), value.size(), allocator);
    auto it = segment_->map->find(segment_key);
    if (it != segment_->map->end()) {
      it->second.swap(bytes);  // the old bytes are freed with `bytes`
    } else {
      segment_->map->emplace(boost::move(segment_key), boost::move(bytes));
    }
    return absl::OkStatus();
  } catch (const bip::bad_alloc&) {
  } catch (const std::length_error&) {
  } catch (const std::bad_alloc&) {
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("state store error saving ", describe(), ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat("state store error saving ", describe()));
  }
  return absl::ResourceExhaustedError(absl::StrCat("state store full: ", describe(), " does not fit; capacity ",
                                                   capacity, " bytes, ", capacity - segment_->file.get_free_memory(),
                                                   " bytes in use (relibd --state-store-mb)"));
}

std::map<std::string, std::string> StateStore::Get(const std::string& module) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, std::string> state;
  std::string prefix = Prefix(module);
  auto take = [&](auto it) {
    state[std::string(it->first.data() + prefix.size(), it->first.size() - prefix.size())] =
        std::string(it->second.data(), it->second.size());
  };
  auto starts_with_prefix = [&](const SegmentString& key) {
    return key.size() >= prefix.size() && std::memcmp(key.data(), prefix.data(), prefix.size()) == 0;
  };
  try {
    // The search key lives in the segment: a full segment cannot make one.
    CharAllocator allocator(segment_->file.get_segment_manager());
    SegmentString start(prefix.data(), prefix.size(), allocator);
    for (auto it = segment_->map->lower_bound(start); it != segment_->map->end() && starts_with_prefix(it->first);
         ++it) {
      take(it);
    }
  } catch (...) {
    state.clear();
    for (auto it = segment_->map->begin(); it != segment_->map->end(); ++it) {
      if (starts_with_prefix(it->first)) take(it);
    }
  }
  return state;
}

void StateStore::Erase(const std::string& module) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string prefix = Prefix(module);
  // A linear walk: a lower_bound key would have to be allocated in the
  // segment, which may be full.
  for (auto it = segment_->map->begin(); it != segment_->map->end();) {
    const SegmentString& key = it->first;
    bool mine = key.size() >= prefix.size() && std::memcmp(key.data(), prefix.data(), prefix.size()) == 0;
    it = mine ? segment_->map->erase(it) : std::next(it);
  }
}

}  // namespace relib::daemon
