// Anonymous mappings made in module scope. The worker defines mmap, mmap64,
// mremap and munmap; what a module mapped and did not unmap is reported at unload
// and, with the unmap policy, unmapped. (malloc's own mappings are made inside
// libc and never pass through here.)
#ifndef RELIB_AGENT_MMAP_TRACKER_H_
#define RELIB_AGENT_MMAP_TRACKER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::maps {

struct Region {
  uintptr_t address = 0;
  size_t length = 0;
};

std::vector<Region> Live(ModuleId id);

// Unmaps every region of `id`; returns the bytes unmapped.
size_t UnmapAll(ModuleId id);

// Drops the records of `id` without unmapping.
void Forget(ModuleId id);

}  // namespace relib::agent::maps

#endif  // RELIB_AGENT_MMAP_TRACKER_H_
