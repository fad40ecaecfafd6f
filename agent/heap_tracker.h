// Per-module heap accounting. The worker executable defines malloc, free,
// calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign,
// valloc, pvalloc, malloc_usable_size and every operator new/delete; each
// block carries an 8-byte trailer saying whether it is the host's or which
// module's (the module that was running when it was allocated,
// CurrentModule()), so the agent knows at any time how much each module holds
// and can report or free what it leaked.
//
// Hot path: glibc's malloc/free of the same size class (the trailer sits in
// the chunk's slack), one trailer write, and for module blocks an entry in
// the allocating thread's own table and counters, changed with plain loads
// and stores: no lock and no atomic read-modify-write unless another thread
// frees the block. Walks of the tables (TopSites, FreeAll, Detach, fork)
// stop the owners briefly instead (membarrier). Allocations made by the
// dynamic loader are never attributed (link maps, TLS blocks).
//
// Frees are validated: when code of the running module itself (the caller's
// return address lies in the module's mapped range) frees, reallocates or
// deletes a pointer that is not a live block of that module — the host's
// memory (the call's `in`), another module's block, a block already freed,
// an interior pointer or an address never allocated — the free is caught
// there, before any header is trusted, and handled by InvalidFreePolicy.
// Frees made by libc, libstdc++ or the dynamic loader on the module's behalf
// are not validated (they may legitimately free memory they allocated in
// host scope), nor are frees a module makes through a tail call from code
// outside it: validation never blames a legitimate free, it may miss some.
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

// What an invalid free from module code does (see the header comment).
enum class InvalidFreePolicy {
  // Default. Writes "invalid free: ..." to stderr, leaves the same sentence
  // as the crash note (crash_note.h) and aborts: the worker dies of SIGABRT
  // in the module's code, relibd blames and counts the death against that
  // module alone, and the damage never surfaces later, unattributed.
  kAbort,
  // Writes the sentence to stderr with "refused" and returns without
  // freeing anything (realloc returns nullptr with errno EINVAL): the block,
  // if it was one, stays allocated and the module keeps running.
  kLeak,
};
// Worker-wide; set once at startup. Thread-safe.
void SetInvalidFreePolicy(InvalidFreePolicy policy);

// Why the calling thread died of a fault at `pc`, if `pc` is one of the
// loads free's inline path makes around a pointer module code frees ("invalid
// free by module code: not a heap block ..."); nullptr otherwise. For the
// fatal-signal handler (crash_handler.cc): async-signal-safe, no allocation.
// That path leaves no crash note (crash_note.h) before its loads; this is
// the same sentence, found from the faulting address instead.
const char* FaultNote(const void* pc);

// Starts attributing allocations made in module `id`'s scope; optionally
// records the caller address of each block (costs a little per allocation).
void StartTracking(ModuleId id, bool capture_sites);

// Live blocks of `id`. Thread-safe, lock-free (may lag concurrent updates:
// a block allocated on one thread and freed on another is counted on both).
Usage LiveUsage(ModuleId id);

// Live blocks of `id` grouped by allocation site, largest first, at most `n`.
// Sites are recorded only when capture was on.
std::vector<Site> TopSites(ModuleId id, size_t n);

// Frees every live block of `id` (whichever thread allocated it, live or
// exited) and hands the freed memory back to the kernel (malloc_trim, all
// arenas). REQUIRES: no code holds pointers into them any more (the module is
// unloaded and its threads are gone).
Usage FreeAll(ModuleId id);

// Stops tracking `id`: live blocks stay allocated and become host blocks (a
// free racing with Detach frees the block either as the module's or as the
// host's, never twice).
Usage Detach(ModuleId id);

// Test only (tests/heap_tracker_test.cc, the walk handshake): calls
// `during(context)` inside a walk of every record, as TopSites, FreeAll and
// Detach make one: a thread that allocates or frees a block of a tracked
// module meanwhile waits until it returns. `during` must not allocate or
// free in module scope itself (it would wait for its own walk).
void WhileWalkingForTesting(void (*during)(void*), void* context);

}  // namespace relib::agent::heap

#endif  // RELIB_AGENT_HEAP_TRACKER_H_
