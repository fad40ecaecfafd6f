// glibc malloc settings for relibd and relib-worker: freed call buffers are
// kept for the next call instead of being handed back to the kernel.
#ifndef RELIB_COMMON_HEAP_REUSE_H_
#define RELIB_COMMON_HEAP_REUSE_H_

namespace relib::common {

// Call once at the start of main, before threads start. A call's buffers
// (the request gRPC read, the link frame, the parsed input and output) are
// allocated and freed on the thread that serves it; with glibc's defaults a
// freed 64 KiB-1 MiB buffer that leaves more than 128 KiB free at the top of
// that thread's arena is given back (madvise), and the next call faults the
// same pages in again (measured: 3-12 page faults per 64 KiB call and 90-260
// per 1 MiB call in relibd). Here blocks under 4 MiB come from the arenas and
// an arena's free top is given back only once it exceeds 8 MiB. Cost: up to
// that much freed memory can stay resident per arena, after large calls and
// after an unload that frees a module's heap (malloc_trim does not shrink a
// thread arena's top). A threshold the operator set in the environment
// (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES) is kept.
void KeepFreedCallBuffers();

}  // namespace relib::common

#endif  // RELIB_COMMON_HEAP_REUSE_H_
