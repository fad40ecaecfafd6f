// The least a tracking interposer can do, for the floor row "bare interposer
// + least books": malloc, free, operator new and operator delete forwarded to
// glibc as in heap_forward.cc, and around each call only the bookkeeping the
// heap tracker's features need, as plainly as it can be written: the module
// the thread runs (one thread-local read: books per module must know whose
// block it is; 0, the host, keeps none), the 8-byte trailer at the end of
// glibc's usable size, an entry in the calling thread's own table (block,
// size, module), a per-module byte and block count, and at free the owner
// check (the trailer names an entry of this thread holding this block of
// the running module). No allocation sites, no walk handshake, no
// validation of foreign pointers beyond that check, no fork handling, no
// double-free detection: a block the check does not recognise (the table
// was full, another thread or module allocated it, the host's) is simply
// freed. The loop enters module 1 with relib_bench_enter_module.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <atomic>
#include <new>

extern "C" {
__attribute__((noplt)) void* __libc_malloc(size_t);
__attribute__((noplt)) void __libc_free(void*);
}

namespace {

constexpr uint64_t kTag = uint64_t{0xc35a} << 48;
constexpr uint32_t kSlots = 4096;
constexpr uint32_t kModules = 256;  // module ids below this, as the tracker's (the bench uses 1)

struct Entry {
  void* block;
  uint64_t size;
  uint32_t module;
  uint32_t next;  // free list, by index; kSlots ends it
};
struct Books {
  uint32_t free_head;  // 0 in a new thread: slots are handed out from `fresh`
  uint32_t fresh;
  // Two arrays, not a 16-byte {bytes, blocks} pair per module as the
  // tracker's Counter: the floor must be the least, and here the pair is
  // not. A thread-local array of 8-byte words is updated by one add with a
  // %fs-relative scaled address each; a 16-byte stride has no scaled
  // address, so the pair costs a shift and two address adds more per
  // update (and written as two += GCC makes it one slower vector add).
  // Measured in 3 interleaved rounds (least CPU time) against these arrays:
  // the pair with scalar adds 0.0-0.9 ns a pair slower on 18 of 20 rows,
  // with the vector add 0.3-1.3 ns on 17 of 20. In a loop both arrays' lines
  // stay in L1, so the second line costs nothing measurable.
  int64_t bytes[kModules];
  int64_t blocks[kModules];
  Entry entries[kSlots];
};
// A thread's books (zero-initialised, local-exec: one %fs-relative address).
constinit thread_local Books books __attribute__((tls_model("local-exec"))) = {};
// The module the thread runs, 0 for the host (as the tracker's scope).
constinit thread_local uint32_t current_module __attribute__((tls_model("local-exec"))) = 0;

inline uint64_t* TrailerOf(void* p) {
  uint64_t header = static_cast<uint64_t*>(p)[-1];
  size_t usable = (header & ~uint64_t{7}) - ((header & 2) ? 16 : 8);
  return reinterpret_cast<uint64_t*>(static_cast<char*>(p) + usable - 8);
}

inline void* Allocate(size_t size) {
  if (size > SIZE_MAX - 64) [[unlikely]] return nullptr;  // size + 8 would wrap
  void* p = __libc_malloc(size + 8);
  if (p == nullptr) [[unlikely]] return nullptr;
  uint32_t module = current_module;
  if (module == 0) [[unlikely]] {  // the host's block: no books
    *TrailerOf(p) = 0;
    return p;
  }
  Books& b = books;
  uint32_t slot = b.free_head;
  if (slot == 0) [[unlikely]] {  // slot 0 is never used: 0 means "take a fresh one"
    slot = b.fresh < kSlots - 1 ? ++b.fresh : 0;
  } else {
    b.free_head = b.entries[slot].next;
  }
  uint64_t* trailer = TrailerOf(p);
  if (slot == 0) [[unlikely]] {
    *trailer = 0;  // table full: untracked
    return p;
  }
  Entry& entry = b.entries[slot];
  entry.block = p;
  entry.size = size;
  entry.module = module;
  b.bytes[module] += static_cast<int64_t>(size);
  b.blocks[module] += 1;
  *trailer = kTag | slot;
  return p;
}

inline void Release(void* p) {
  if (p == nullptr) return;
  uint64_t* trailer = TrailerOf(p);
  uint64_t t = *trailer;
  Books& b = books;
  uint32_t slot = static_cast<uint32_t>(t) & (kSlots - 1);
  Entry& entry = b.entries[slot];
  uint32_t module = current_module;
  if ((t >> 48) == (kTag >> 48) && slot != 0 && entry.block == p && entry.module == module) [[likely]] {
    b.bytes[module] -= static_cast<int64_t>(entry.size);
    b.blocks[module] -= 1;
    entry.block = nullptr;
    entry.next = b.free_head;
    b.free_head = slot;
  }
  *trailer = 0;
  __libc_free(p);
}

__attribute__((noinline)) void* NewSlow(size_t size) {
  for (;;) {
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
    if (void* p = Allocate(size)) return p;
  }
}
inline void* New(size_t size) {
  if (size == 0) size = 1;
  void* p = Allocate(size);
  if (p != nullptr) [[likely]] return p;
  return NewSlow(size);
}

}  // namespace

extern "C" {
void relib_bench_enter_module(uint32_t module) {
  current_module = module;
  std::atomic_signal_fence(std::memory_order_seq_cst);  // not moved across an allocation
}
void* malloc(size_t size) { return Allocate(size); }
void free(void* p) { Release(p); }
}
void* operator new(size_t size) { return New(size); }
void* operator new[](size_t size) { return New(size); }
void operator delete(void* p) noexcept { Release(p); }
void operator delete[](void* p) noexcept { Release(p); }
void operator delete(void* p, size_t) noexcept { Release(p); }
void operator delete[](void* p, size_t) noexcept { Release(p); }
