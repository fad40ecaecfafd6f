// Mappings made in module scope, anonymous and file-backed alike. The worker
// defines mmap, mmap64, mremap and munmap; what a module mapped and did not
// unmap is reported at unload (file-backed ones with their file) and, by
// policy, unmapped. File-backed mappings matter as much as anonymous ones: a
// symbolizer (libbacktrace, behind std::stacktrace) maps the ELF files of
// every loaded object, and a view of a module's file keeps that file mapped
// after its dlclose. (malloc's own mappings are made inside libc and never
// pass through here.)
#ifndef RELIB_AGENT_MMAP_TRACKER_H_
#define RELIB_AGENT_MMAP_TRACKER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::maps {

struct Region {
  uintptr_t address = 0;
  size_t length = 0;
  // The file as the worker saw it when the module mapped it (readlink of the
  // fd, so possibly ending in " (deleted)"); empty for anonymous memory.
  std::string path;
};

struct HeldRegion {
  ModuleId module = kHost;
  Region region;
};

// Regions of `id`, in the order they were mapped. Thread-safe.
std::vector<Region> Live(ModuleId id);

// Regions of any module overlapping [start, end). Thread-safe.
std::vector<HeldRegion> Overlapping(uintptr_t start, uintptr_t end);

// Unmaps every region of `id` for which `which` is true (all if empty) and
// drops their records; returns the bytes unmapped.
size_t Unmap(ModuleId id, const std::function<bool(const Region&)>& which = {});

// Drops the records of `id` without unmapping.
void Forget(ModuleId id);

}  // namespace relib::agent::maps

#endif  // RELIB_AGENT_MMAP_TRACKER_H_
