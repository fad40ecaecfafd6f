// malloc/free and new/delete pairs, 16 B to 4 KiB, on 1 and 2 threads.
// Built four times from this file: relib_bench_heap_tracked links the
// agent's interposers and runs the loop as a module would (module scope, its
// code inside the module's range, so frees are validated),
// relib_bench_heap_plain is the same loop on glibc alone, and the floors
// relib_bench_heap_forward and relib_bench_heap_minimal the same loop through
// a bare interposer that only forwards to glibc (heap_forward.cc) and one
// that keeps the least books (heap_minimal_interposer.cc). scripts/bench
// divides them.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#ifdef RELIB_BENCH_TRACKED
#include <link.h>

#include "agent/heap_tracker.h"
#include "agent/loaded_range.h"
#include "agent/module_context.h"
#endif

namespace {

#ifdef RELIB_BENCH_TRACKED
relib::agent::ModuleId bench_module = relib::agent::kHost;

// The executable's own mapped range: the loop below counts as module code.
int FindExecutable(dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') return 0;
  relib::agent::LoadedRange range = relib::agent::LoadedRangeOf(*info);
  static_cast<uintptr_t*>(out)[0] = range.start;
  static_cast<uintptr_t*>(out)[1] = range.end;
  return 1;
}

void SetUpModule() {
  bench_module = relib::agent::AcquireModuleId();
  uintptr_t range[2] = {0, 0};
  dl_iterate_phdr(&FindExecutable, range);
  relib::agent::SetModuleRange(bench_module, range[0], range[1]);
  relib::agent::SetModuleName(bench_module, "bench");
  relib::agent::heap::StartTracking(bench_module, false);
}
#define IN_MODULE_SCOPE relib::agent::ModuleScope scope(bench_module)
#elif defined(RELIB_BENCH_INTERPOSED)
// The bare interposers' own scope (heap_forward.cc, heap_minimal_interposer.cc).
extern "C" void relib_bench_enter_module(unsigned module);
void SetUpModule() {}
struct InterposerModuleScope {
  InterposerModuleScope() { relib_bench_enter_module(1); }
  ~InterposerModuleScope() { relib_bench_enter_module(0); }
};
#define IN_MODULE_SCOPE InterposerModuleScope scope
#else
void SetUpModule() {}
#define IN_MODULE_SCOPE
#endif

void BM_MallocFree(benchmark::State& state) {
  IN_MODULE_SCOPE;
  const auto size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(size);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void BM_NewDelete(benchmark::State& state) {
  IN_MODULE_SCOPE;
  const auto size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ::operator new(size);
    benchmark::DoNotOptimize(p);
    ::operator delete(p);
  }
}

// Many live blocks at once (a batch allocated, then freed): list work and
// cache misses the single pair does not show.
void BM_MallocBatch64(benchmark::State& state) {
  IN_MODULE_SCOPE;
  const auto size = static_cast<size_t>(state.range(0));
  void* blocks[64];
  for (auto _ : state) {
    for (void*& p : blocks) {
      p = std::malloc(size);
      benchmark::DoNotOptimize(p);
    }
    for (void* p : blocks) std::free(p);
  }
  state.SetItemsProcessed(state.iterations() * 64);
}

#ifdef RELIB_BENCH_TRACKED
// The floor of interposing at all: the same pair in host scope, where the
// tracker writes its 8-byte trailer and keeps no books.
void BM_MallocFreeHostScope(benchmark::State& state) {
  const auto size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(size);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}
BENCHMARK(BM_MallocFreeHostScope)->RangeMultiplier(4)->Range(16, 4096);
#endif

#if !defined(RELIB_BENCH_TRACKED) && !defined(RELIB_BENCH_INTERPOSED)
// The floor of keeping books at all, built into the plain process: the least
// work per pair that any tracker with the features needs, written inline in
// the loop with no call layer, no thread-local lookups, no fork or walker
// handshake: the 8-byte trailer (found from glibc's chunk header), an entry
// in a thread's table set and cleared (what FreeAll and TopSites enumerate),
// a per-module byte and block count up and down (LiveUsage), and the owner
// check a validated free makes (the trailer names an entry that holds this
// block, of this module). If this alone is above the target, so is any
// tracker.
struct MinimalEntry {
  void* block;
  uint64_t size;
  uint32_t module;
  uint32_t next;
};
struct MinimalBooks {
  MinimalEntry entries[64];
  uint32_t free_head = 0;
  int64_t bytes[4] = {};
  int64_t blocks[4] = {};
  MinimalBooks() {
    for (uint32_t i = 0; i < 64; ++i) entries[i] = {nullptr, 0, 0, i + 1};
  }
};

void BM_MinimalBooks(benchmark::State& state) {
  const auto size = static_cast<size_t>(state.range(0));
  MinimalBooks books;
  benchmark::DoNotOptimize(&books);
  constexpr uint32_t kModule = 1;
  constexpr uint64_t kTag = uint64_t{0xc35a} << 48;
  auto trailer_of = [](void* p) {
    char* chunk = static_cast<char*>(p) - 8;  // glibc's chunk header
    asm("" : "+r"(chunk));                    // not outside the block, as far as the compiler knows
    uint64_t header;
    std::memcpy(&header, chunk, sizeof(header));
    size_t usable = (header & ~uint64_t{7}) - ((header & 2) ? 16 : 8);
    return reinterpret_cast<uint64_t*>(static_cast<char*>(p) + usable - 8);
  };
  for (auto _ : state) {
    void* p = std::malloc(size + 8);
    uint32_t slot = books.free_head;
    MinimalEntry& entry = books.entries[slot];
    books.free_head = entry.next;
    entry.block = p;
    entry.size = size;
    entry.module = kModule;
    books.bytes[kModule] += static_cast<int64_t>(size);
    books.blocks[kModule] += 1;
    *trailer_of(p) = kTag | slot;
    benchmark::DoNotOptimize(p);
    uint64_t* trailer = trailer_of(p);
    uint64_t t = *trailer;
    MinimalEntry& owned = books.entries[t & 63];
    if ((t >> 48) != (kTag >> 48) || owned.block != p || owned.module != kModule) std::abort();
    books.bytes[owned.module] -= static_cast<int64_t>(owned.size);
    books.blocks[owned.module] -= 1;
    owned.block = nullptr;
    owned.next = books.free_head;
    books.free_head = static_cast<uint32_t>(t & 63);
    *trailer = 0;
    std::free(p);
  }
  benchmark::DoNotOptimize(&books);
}
BENCHMARK(BM_MinimalBooks)->RangeMultiplier(4)->Range(16, 4096);
#endif

// The clock this thread got, in every binary and round: a chain of dependent
// register adds, one cycle each, so its CPU time per add is the period of
// the core as the VM sees it. The host's frequency (boost shared with its
// other tenants) and a busy hyperthread sibling change CPU times without any
// change of code; a round whose probe is slow says so.
void BM_ClockProbe(benchmark::State& state) {
  uint64_t x = 0;
  for (auto _ : state) {
    for (int i = 0; i < 100; ++i) {
      asm volatile(
          "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
          "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
          : "+r"(x));
    }
  }
  benchmark::DoNotOptimize(x);
  state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(BM_ClockProbe)->Threads(1)->Threads(2);

#define SIZES RangeMultiplier(4)->Range(16, 4096)
BENCHMARK(BM_MallocFree)->SIZES->Threads(1)->Threads(2);
BENCHMARK(BM_NewDelete)->SIZES->Threads(1)->Threads(2);
BENCHMARK(BM_MallocBatch64)->Arg(64)->Threads(1)->Threads(2);

}  // namespace

int main(int argc, char** argv) {
  SetUpModule();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
