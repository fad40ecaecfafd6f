// The least an interposing allocator costs: malloc, free, operator new and
// operator delete defined in the executable and forwarded to glibc's own
// entry points (as heap_tracker.cc calls them), with nothing else done.
// Linked into relib_bench_heap_forward, the floor row "bare interposer".
#include <cstddef>
#include <new>

extern "C" {
__attribute__((noplt)) void* __libc_malloc(size_t);
__attribute__((noplt)) void __libc_free(void*);

// The loop's module scope (heap_bench.cc): nothing to do here.
void relib_bench_enter_module(unsigned) {}
void* malloc(size_t size) { return __libc_malloc(size); }
void free(void* p) { __libc_free(p); }
}

namespace {
// operator new's contract (the new_handler loop, then std::bad_alloc), out of
// the common path as in the tracker.
__attribute__((noinline)) void* NewSlow(size_t size) {
  for (;;) {
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
    if (void* p = __libc_malloc(size)) return p;
  }
}
inline void* New(size_t size) {
  if (size == 0) size = 1;
  void* p = __libc_malloc(size);
  if (p != nullptr) [[likely]] return p;
  return NewSlow(size);
}
}  // namespace

void* operator new(size_t size) { return New(size); }
void* operator new[](size_t size) { return New(size); }
void operator delete(void* p) noexcept { __libc_free(p); }
void operator delete[](void* p) noexcept { __libc_free(p); }
void operator delete(void* p, size_t) noexcept { __libc_free(p); }
void operator delete[](void* p, size_t) noexcept { __libc_free(p); }
