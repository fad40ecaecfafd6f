#include "agent/module_context.h"

#include <link.h>

#include <atomic>
#include <cstring>
#include <iterator>

#include "agent/loaded_range.h"

namespace relib::agent {
namespace internal {
constinit thread_local ModuleId current_module __attribute__((tls_model("local-exec"))) = kHost;
ModuleRange module_ranges[kMaxModules];
std::atomic<uintptr_t> loader_start{0};
std::atomic<uintptr_t> loader_end{0};
}  // namespace internal

namespace {

using internal::loader_end;
using internal::loader_start;

std::atomic<bool> used[kMaxModules];
auto& ranges = internal::module_ranges;

char names[kMaxModules][64];

int FindLoader(dl_phdr_info* info, size_t, void*) {
  if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "/ld-linux") == nullptr) return 0;
  LoadedRange range = LoadedRangeOf(*info);
  loader_start = range.start;
  loader_end = range.end;
  return 1;
}

}  // namespace

void RanSince::Note(ModuleId id) {
  if (id == kHost || id >= kMaxModules) return;
  std::atomic<uint64_t>& word = bits_[id / 64];
  const uint64_t bit = uint64_t{1} << (id % 64);
  // Read first: the common case (already set) writes nothing.
  if ((word.load(std::memory_order_relaxed) & bit) == 0) word.fetch_or(bit, std::memory_order_relaxed);
}

ModuleId RanSince::Take() {
  ModuleId only = kHost;
  int ran = 0;
  for (size_t w = 0; w < std::size(bits_); ++w) {
    for (uint64_t bits = bits_[w].exchange(0, std::memory_order_relaxed); bits != 0; bits &= bits - 1) {
      ++ran;
      only = static_cast<ModuleId>(w * 64 + __builtin_ctzll(bits));
    }
  }
  return ran > 1 ? kUnattributed : only;
}

ModuleId AcquireModuleId() {
  if (loader_end.load(std::memory_order_relaxed) == 0) dl_iterate_phdr(&FindLoader, nullptr);
  for (ModuleId id = 1; id < kMaxModules; ++id) {
    bool expected = false;
    if (used[id].compare_exchange_strong(expected, true)) return id;
  }
  return kHost;
}

void ReleaseModuleId(ModuleId id) {
  if (id == kHost || id >= kMaxModules) return;
  ranges[id].start = 0;
  ranges[id].end = 0;
  used[id] = false;
}

void SetModuleName(ModuleId id, const char* name) {
  if (id == kHost || id >= kMaxModules) return;
  size_t n = 0;
  for (; name[n] && n + 1 < sizeof(names[id]); ++n) names[id][n] = name[n];
  names[id][n] = '\0';
}

const char* ModuleName(ModuleId id) { return id < kMaxModules ? names[id] : ""; }

void SetModuleRange(ModuleId id, uintptr_t start, uintptr_t end) {
  if (id == kHost || id >= kMaxModules) return;
  ranges[id].end = end;
  ranges[id].start = start;
}

ModuleId ModuleOfAddress(const void* address) {
  auto a = reinterpret_cast<uintptr_t>(address);
  for (ModuleId id = 1; id < kMaxModules; ++id) {
    uintptr_t start = ranges[id].start.load(std::memory_order_relaxed);
    if (start != 0 && a >= start && a < ranges[id].end.load(std::memory_order_relaxed)) return id;
  }
  return kHost;
}

}  // namespace relib::agent
