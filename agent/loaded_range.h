// The address range a loaded object's loadable segments cover, read from
// one dl_iterate_phdr entry.
#ifndef RELIB_AGENT_LOADED_RANGE_H_
#define RELIB_AGENT_LOADED_RANGE_H_

#include <link.h>

#include <algorithm>
#include <cstdint>

namespace relib::agent {

struct LoadedRange {
  uintptr_t start = UINTPTR_MAX;
  uintptr_t end = 0;  // exclusive; start >= end when the object has no PT_LOAD
};

// [start, end) spanning every PT_LOAD segment of `info`'s object in memory.
// Async-signal-safe (no allocation), so usable from dl_iterate_phdr callbacks
// anywhere, the allocator's set-up included.
inline LoadedRange LoadedRangeOf(const dl_phdr_info& info) {
  LoadedRange range;
  for (int i = 0; i < info.dlpi_phnum; ++i) {
    const auto& ph = info.dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    range.start = std::min<uintptr_t>(range.start, info.dlpi_addr + ph.p_vaddr);
    range.end = std::max<uintptr_t>(range.end, info.dlpi_addr + ph.p_vaddr + ph.p_memsz);
  }
  return range;
}

}  // namespace relib::agent

#endif  // RELIB_AGENT_LOADED_RANGE_H_
