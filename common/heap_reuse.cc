#include "common/heap_reuse.h"

#include <malloc.h>

namespace relib::common {
namespace {

// Fixed values also turn off glibc's sliding mmap threshold, which raises
// both only after an mmapped block is freed (see KeepFreedCallBuffers).
constexpr int kMmapThreshold = 4 << 20;
constexpr int kTrimThreshold = 8 << 20;

}  // namespace

void KeepFreedCallBuffers() {
  ::mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
  ::mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
}

}  // namespace relib::common
