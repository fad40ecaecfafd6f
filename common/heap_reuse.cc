#include "common/heap_reuse.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace relib::common {
namespace {

// Fixed values also turn off glibc's sliding mmap threshold, which raises
// both only after an mmapped block is freed (see KeepFreedCallBuffers).
constexpr int kMmapThreshold = 4 << 20;
constexpr int kTrimThreshold = 8 << 20;

// True when the operator set this glibc malloc setting through the
// environment (the old MALLOC_*_ variable or GLIBC_TUNABLES): theirs wins.
bool SetByEnvironment(const char* variable, const char* tunable) {
  if (std::getenv(variable) != nullptr) return true;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  return tunables != nullptr && std::strstr(tunables, tunable) != nullptr;
}

}  // namespace

void KeepFreedCallBuffers() {
  if (!SetByEnvironment("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold")) {
    ::mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
  }
  if (!SetByEnvironment("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold")) {
    ::mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
  }
}

}  // namespace relib::common
