// malloc/free and new/delete pairs, 16 B to 4 KiB, on 1 and 2 threads.
// Built twice from this file: relib_bench_heap_tracked links the agent's
// interposers and runs the loop as a module would (module scope, its code
// inside the module's range, so frees are validated), relib_bench_heap_plain
// is the same loop on glibc alone. scripts/bench divides the two.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdlib>
#include <new>

#ifdef RELIB_BENCH_TRACKED
#include <link.h>

#include "agent/heap_tracker.h"
#include "agent/module_context.h"
#endif

namespace {

#ifdef RELIB_BENCH_TRACKED
relib::agent::ModuleId bench_module = relib::agent::kHost;

// The executable's own mapped range: the loop below counts as module code.
int FindExecutable(dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') return 0;
  uintptr_t start = UINTPTR_MAX, end = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    start = std::min<uintptr_t>(start, info->dlpi_addr + ph.p_vaddr);
    end = std::max<uintptr_t>(end, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
  }
  static_cast<uintptr_t*>(out)[0] = start;
  static_cast<uintptr_t*>(out)[1] = end;
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
// tracker writes its 16-byte header and keeps no books.
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

// The price of one uncontended atomic exchange (the lock a shared block list
// needs on allocate and on free), to put the tracked figures in proportion.
void BM_TwoAtomicExchanges(benchmark::State& state) {
  static std::atomic<bool> word{false};
  for (auto _ : state) {
    benchmark::DoNotOptimize(word.exchange(true, std::memory_order_acquire));
    word.store(false, std::memory_order_release);
    benchmark::DoNotOptimize(word.exchange(true, std::memory_order_acquire));
    word.store(false, std::memory_order_release);
  }
}
BENCHMARK(BM_TwoAtomicExchanges);

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
