// Per-module heap accounting. The worker executable defines malloc, free,
// calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign,
// valloc, pvalloc, malloc_usable_size and every operator new/delete; each
// block carries a small header naming the module that was running when it was
// allocated (CurrentModule()), so the agent knows at any time how much each
// module holds and can report or free what it leaked.
//
// Hot path: one header write, and for module blocks one lock of a
// (module, shard) pair — never a global lock. Allocations made by the dynamic
// loader are never attributed (link maps, TLS blocks).
#ifndef RELIB_AGENT_HEAP_TRACKER_H_
#define RELIB_AGENT_HEAP_TRACKER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::heap {

struct Usage {
  int64_t bytes = 0;   // requested bytes of live blocks
  int64_t blocks = 0;
};

struct Site {
  const void* address = nullptr;  // return address of the allocation call
  int64_t bytes = 0;
  int64_t blocks = 0;
};

// False when the build leaves malloc to a sanitizer runtime.
bool Enabled();

// Starts attributing allocations made in module `id`'s scope; optionally
// records the caller address of each block (costs a little per allocation).
void StartTracking(ModuleId id, bool capture_sites);

// Live blocks of `id`. Thread-safe, lock-free (may lag concurrent updates).
Usage LiveUsage(ModuleId id);

// Live blocks of `id` grouped by allocation site, largest first, at most `n`.
// Sites are recorded only when capture was on.
std::vector<Site> TopSites(ModuleId id, size_t n);

// Frees every live block of `id` and hands the freed memory back to the
// kernel (malloc_trim, all arenas). REQUIRES: no code holds pointers into
// them any more (the module is unloaded and its threads are gone).
Usage FreeAll(ModuleId id);

// Stops tracking `id`: live blocks stay allocated and become host blocks.
Usage Detach(ModuleId id);

}  // namespace relib::agent::heap

#endif  // RELIB_AGENT_HEAP_TRACKER_H_
