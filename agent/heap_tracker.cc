#include "agent/heap_tracker.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "agent/crash_note.h"

extern "C" {
void* __libc_malloc(size_t);
void __libc_free(void*);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
}

namespace relib::agent::heap {
namespace {

// Immediately before every user pointer.
struct Tail {
  uint64_t size;    // requested size
  uint32_t module;  // owner; 0 = host; kFreed once freed
  uint32_t offset;  // user pointer - base pointer
};
// Before the Tail of module blocks only: list membership for leak walks.
struct Node {
  Node* prev;
  Node* next;
  const void* site;
  uint32_t shard;
  uint32_t check;  // CheckWord(user, module): tells a real block from bytes that look like one
};
constexpr uint32_t kFreed = UINT32_MAX;
// Below this nothing is ever mapped (vm.mmap_min_addr), so no header either.
constexpr uintptr_t kLowestBlock = 65536;
static_assert(sizeof(Tail) == 16 && sizeof(Node) == 32);
constexpr size_t kHostHeader = sizeof(Tail);
constexpr size_t kModuleHeader = sizeof(Tail) + sizeof(Node);
constexpr uint32_t kShards = 16;
// glibc's default M_MXFAST (64 * sizeof(size_t) / 4), restored after FreeAll.
constexpr int kDefaultMaxFast = 64 * sizeof(size_t) / 4;

// A test-and-test-and-set lock: one atomic exchange to take it, a plain
// release store to drop it. A shard is normally used by one thread (each
// thread allocates into its own shard), so it is almost never contended, and
// a std::mutex would add a second read-modify-write on unlock.
class SpinLock {
 public:
  void lock() {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      for (int spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins < 64) {
          __builtin_ia32_pause();
        } else {
          ::sched_yield();  // the holder was preempted
        }
      }
    }
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

struct alignas(64) Shard {
  SpinLock mutex;
  Node* first = nullptr;
  // Written only under `mutex`, read without it (LiveUsage): plain loads and
  // stores of an atomic, no read-modify-write.
  std::atomic<int64_t> bytes{0};
  std::atomic<int64_t> blocks{0};
  void Add(int64_t size, int64_t count) {
    bytes.store(bytes.load(std::memory_order_relaxed) + size, std::memory_order_relaxed);
    blocks.store(blocks.load(std::memory_order_relaxed) + count, std::memory_order_relaxed);
  }
};

struct ModuleHeap {
  std::atomic<bool> active{false};
  std::atomic<bool> capture_sites{false};
  Shard shards[kShards];
};
ModuleHeap modules[kMaxModules];

// Shard locks are held across fork(), so a child forked while another thread
// allocated module memory never finds one locked for ever. Only active
// modules' shards can be held (allocation checks `active` first).
bool locked_for_fork[kMaxModules];
void LockShardsForFork() {
  for (ModuleId id = 1; id < kMaxModules; ++id) {
    locked_for_fork[id] = modules[id].active.load(std::memory_order_acquire);
    if (!locked_for_fork[id]) continue;
    for (Shard& shard : modules[id].shards) shard.mutex.lock();
  }
}
void UnlockShardsAfterFork() {
  for (ModuleId id = 1; id < kMaxModules; ++id) {
    if (!locked_for_fork[id]) continue;
    for (Shard& shard : modules[id].shards) shard.mutex.unlock();
  }
}
[[maybe_unused]] const bool shards_held_across_fork =
    ::pthread_atfork(&LockShardsForFork, &UnlockShardsAfterFork, &UnlockShardsAfterFork) == 0;

std::atomic<uint32_t> next_shard{0};
thread_local uint32_t thread_shard __attribute__((tls_model("initial-exec"))) = UINT32_MAX;

uint32_t CheckWord(const void* user, uint32_t module) {
  uint64_t x = reinterpret_cast<uintptr_t>(user) ^ (uint64_t{module} << 48) ^ 0x6a09e667f3bcc909ull;
  x ^= x >> 31;
  x *= 0x9e3779b97f4a7c15ull;
  x ^= x >> 29;
  return static_cast<uint32_t>(x);
}

uint32_t ThreadShard() {
  if (thread_shard == UINT32_MAX) thread_shard = next_shard.fetch_add(1, std::memory_order_relaxed) % kShards;
  return thread_shard;
}

Tail* TailOf(void* user) { return reinterpret_cast<Tail*>(static_cast<char*>(user) - sizeof(Tail)); }
Node* NodeOf(void* user) { return reinterpret_cast<Node*>(static_cast<char*>(user) - kModuleHeader); }
void* UserOf(Node* node) { return reinterpret_cast<char*>(node) + kModuleHeader; }

void Link(Shard& shard, Node* node) {
  node->prev = nullptr;
  node->next = shard.first;
  if (shard.first) shard.first->prev = node;
  shard.first = node;
}

void Unlink(Shard& shard, Node* node) {
  if (node->prev) {
    node->prev->next = node->next;
  } else {
    shard.first = node->next;
  }
  if (node->next) node->next->prev = node->prev;
}

void* Allocate(size_t size, size_t align, const void* site, bool zero) {
  ModuleId module = CurrentModule();
  if (module != kHost && (!modules[module].active.load(std::memory_order_relaxed) || IsInDynamicLoader(site))) {
    module = kHost;
  }
  if (align > (size_t{1} << 31)) {  // the header keeps the padding in 32 bits
    errno = EINVAL;
    return nullptr;
  }
  size_t header = module == kHost ? kHostHeader : kModuleHeader;
  size_t pad = align <= 16 ? header : (header + align - 1) / align * align;
  if (size > SIZE_MAX - pad) {
    errno = ENOMEM;
    return nullptr;
  }
  void* base;
  if (align <= 16) {
    base = zero ? __libc_calloc(1, pad + size) : __libc_malloc(pad + size);
  } else {
    base = __libc_memalign(align, pad + size);
    if (base && zero) std::memset(base, 0, pad + size);
  }
  if (base == nullptr) return nullptr;
  void* user = static_cast<char*>(base) + pad;
  Tail* tail = TailOf(user);
  tail->size = size;
  tail->offset = static_cast<uint32_t>(pad);
  __atomic_store_n(&tail->module, module, __ATOMIC_RELAXED);
  if (module != kHost) {
    Node* node = NodeOf(user);
    ModuleHeap& heap = modules[module];
    node->site = heap.capture_sites.load(std::memory_order_relaxed) ? site : nullptr;
    node->shard = ThreadShard();
    node->check = CheckWord(user, module);
    Shard& shard = heap.shards[node->shard];
    std::lock_guard<SpinLock> lock(shard.mutex);
    Link(shard, node);
    shard.Add(static_cast<int64_t>(size), 1);
  }
  return user;
}

// Frees a block known to be one (validated, or freed by host code).
void ReleaseBlock(void* user) {
  Tail* tail = TailOf(user);
  uint32_t module = __atomic_load_n(&tail->module, __ATOMIC_RELAXED);
  if (module != kHost && module < kMaxModules) {
    Node* node = NodeOf(user);
    Shard& shard = modules[module].shards[node->shard % kShards];
    std::lock_guard<SpinLock> lock(shard.mutex);
    // Re-check under the lock: Detach/FreeAll may have taken the block.
    if (__atomic_load_n(&tail->module, __ATOMIC_RELAXED) == module) {
      Unlink(shard, node);
      shard.Add(-static_cast<int64_t>(tail->size), -1);
    }
  }
  // So a second free of this block by its module is recognised (glibc's own
  // bookkeeping overwrites the first 16 bytes of the chunk: the Node of a
  // module block, but the Tail only of host blocks).
  __atomic_store_n(&tail->module, kFreed, __ATOMIC_RELAXED);
  __libc_free(static_cast<char*>(user) - tail->offset);
}

// ---- Validation of frees made by module code ----

std::atomic<InvalidFreePolicy> invalid_free_policy{InvalidFreePolicy::kAbort};

enum class Verdict { kOwn, kHost, kOtherModule, kFreed, kNotABlock };

constexpr char kUnreadableHeader[] =
    "invalid free by module code: not a heap block (the memory before the pointer is not mapped)";

// What `user`, freed by code of `module`, is. Reads the header only after
// the cheap checks; a wild pointer can still fault there, which the crash
// note then explains. `owner` receives the owning module of kOtherModule.
Verdict Classify(void* user, ModuleId module, ModuleId* owner) {
  auto address = reinterpret_cast<uintptr_t>(user);
  // Every block this allocator hands out is 16-aligned (glibc's alignment,
  // headers of 16 or 48 bytes, larger alignments padded to themselves).
  if (address % 16 != 0 || address < kLowestBlock) return Verdict::kNotABlock;
  SetCrashNote(kUnreadableHeader);
  Tail* tail = TailOf(user);
  uint32_t tag = __atomic_load_n(&tail->module, __ATOMIC_RELAXED);
  uint32_t offset = tail->offset;
  Verdict verdict = Verdict::kNotABlock;
  if (tag == kFreed) {
    verdict = Verdict::kFreed;
  } else if (tag == kHost) {
    if (offset >= kHostHeader && offset % 16 == 0) verdict = Verdict::kHost;
  } else if (tag < kMaxModules && offset >= kModuleHeader && offset % 16 == 0 &&
             NodeOf(user)->check == CheckWord(user, tag)) {
    *owner = tag;
    verdict = tag == module ? Verdict::kOwn : Verdict::kOtherModule;
  }
  SetCrashNote(nullptr);
  return verdict;
}

// Appends to a fixed buffer without allocating (we are inside free()).
class Line {
 public:
  Line& operator<<(const char* text) {
    for (; text && *text && length_ + 1 < sizeof(text_); ++text) text_[length_++] = *text;
    text_[length_] = '\0';
    return *this;
  }
  Line& Number(uintptr_t value, unsigned base, const char* prefix) {
    *this << prefix;
    char reversed[24];
    int n = 0;
    do {
      reversed[n++] = "0123456789abcdef"[value % base];
      value /= base;
    } while (value != 0);
    char digits[25];
    for (int i = 0; i < n; ++i) digits[i] = reversed[n - 1 - i];
    digits[n] = '\0';
    return *this << digits;
  }
  const char* c_str() const { return text_; }
  size_t size() const { return length_; }

 private:
  char text_[256] = "";
  size_t length_ = 0;
};

thread_local Line invalid_free_note __attribute__((tls_model("initial-exec")));

// Handles an invalid free by `module`'s code; returns only under kLeak.
void OnInvalidFree(void* user, ModuleId module, Verdict verdict, ModuleId owner, const char* function) {
  Line& line = invalid_free_note;
  line = Line();
  line << "invalid free: module '" << ModuleName(module) << "' passed ";
  line.Number(reinterpret_cast<uintptr_t>(user), 16, "0x") << " to " << function << ", ";
  switch (verdict) {
    case Verdict::kHost: line << "a block owned by the host"; break;
    case Verdict::kOtherModule: line << "a block owned by module '" << ModuleName(owner) << "'"; break;
    case Verdict::kFreed: line << "a block already freed"; break;
    default: line << "not a heap block (never allocated, or an interior pointer)"; break;
  }
  bool leak = invalid_free_policy.load(std::memory_order_relaxed) == InvalidFreePolicy::kLeak;
  Line out;
  out << "relib-worker[";
  out.Number(static_cast<uintptr_t>(::getpid()), 10, "") << "]: " << line.c_str()
      << (leak ? "; refused (nothing freed), module keeps running\n" : "; aborting\n");
  ssize_t ignored = ::write(STDERR_FILENO, out.c_str(), out.size());
  (void)ignored;
  if (leak) return;
  SetCrashNote(line.c_str());
  std::abort();
}

// True if `caller` (a return address) is code of the module the thread is
// running: only such frees are validated. `module` receives the module.
bool FromModuleCode(const void* caller, ModuleId* module) {
  ModuleId id = CurrentModule();
  if (id == kHost || !InModule(id, caller)) return false;
  *module = id;
  return true;
}

// False if `user`, freed by `caller` through `function`, must not be freed
// (after OnInvalidFree returned under kLeak).
bool MayFree(void* user, const void* caller, const char* function) {
  ModuleId module;
  if (!FromModuleCode(caller, &module)) return true;
  ModuleId owner = kHost;
  Verdict verdict = Classify(user, module, &owner);
  if (verdict == Verdict::kOwn) return true;
  OnInvalidFree(user, module, verdict, owner, function);
  return false;
}

[[maybe_unused]] void Release(void* user, const void* caller, const char* function) {
  if (user == nullptr || !MayFree(user, caller, function)) return;
  ReleaseBlock(user);
}

[[maybe_unused]] void* Reallocate(void* user, size_t size, const void* site, const char* function) {
  if (user == nullptr) return Allocate(size, 16, site, false);
  if (!MayFree(user, site, function)) {
    errno = EINVAL;
    return nullptr;
  }
  if (size == 0) {
    ReleaseBlock(user);
    return nullptr;
  }
  Tail* tail = TailOf(user);
  bool host_block = __atomic_load_n(&tail->module, __ATOMIC_RELAXED) == kHost && tail->offset == kHostHeader;
  if (host_block && CurrentModule() == kHost) {
    if (size > SIZE_MAX - kHostHeader) {
      errno = ENOMEM;
      return nullptr;
    }
    void* base = __libc_realloc(static_cast<char*>(user) - kHostHeader, size + kHostHeader);
    if (base == nullptr) return nullptr;
    void* moved = static_cast<char*>(base) + kHostHeader;
    TailOf(moved)->size = size;
    return moved;
  }
  void* moved = Allocate(size, 16, site, false);
  if (moved == nullptr) return nullptr;
  std::memcpy(moved, user, std::min<size_t>(size, tail->size));
  ReleaseBlock(user);
  return moved;
}

[[maybe_unused]] bool IsPowerOfTwo(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

[[maybe_unused]] void* NewOrThrow(size_t size, size_t align, const void* site) {
  if (size == 0) size = 1;
  for (;;) {
    void* p = Allocate(size, align, site, false);
    if (p) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}

// Takes every block of `id` off its lists; `free_blocks` also frees them.
Usage TakeAll(ModuleId id, bool free_blocks) {
  Usage usage;
  if (id == kHost || id >= kMaxModules) return usage;
  ModuleHeap& heap = modules[id];
  heap.active = false;
  for (Shard& shard : heap.shards) {
    Node* list;
    {
      std::lock_guard<SpinLock> lock(shard.mutex);
      list = shard.first;
      shard.first = nullptr;
      for (Node* node = list; node; node = node->next) {
        Tail* tail = TailOf(UserOf(node));
        usage.bytes += static_cast<int64_t>(tail->size);
        usage.blocks += 1;
        __atomic_store_n(&tail->module, kHost, __ATOMIC_RELAXED);
      }
      shard.bytes.store(0, std::memory_order_relaxed);
      shard.blocks.store(0, std::memory_order_relaxed);
    }
    while (free_blocks && list) {
      Node* next = list->next;
      void* user = UserOf(list);
      __libc_free(static_cast<char*>(user) - TailOf(user)->offset);
      list = next;
    }
  }
  return usage;
}

}  // namespace

#ifdef RELIB_NO_HEAP_INTERPOSE
bool Enabled() { return false; }
#else
bool Enabled() { return true; }
#endif

void SetInvalidFreePolicy(InvalidFreePolicy policy) { invalid_free_policy.store(policy); }

void StartTracking(ModuleId id, bool capture_sites) {
  if (id == kHost || id >= kMaxModules) return;
  modules[id].capture_sites = capture_sites;
  modules[id].active = true;
}

Usage LiveUsage(ModuleId id) {
  Usage usage;
  if (id == kHost || id >= kMaxModules) return usage;
  for (const Shard& shard : modules[id].shards) {
    usage.bytes += shard.bytes.load(std::memory_order_relaxed);
    usage.blocks += shard.blocks.load(std::memory_order_relaxed);
  }
  return usage;
}

std::vector<Site> TopSites(ModuleId id, size_t n) {
  HostScope host;
  std::map<const void*, Site> by_site;
  if (id != kHost && id < kMaxModules) {
    for (Shard& shard : modules[id].shards) {
      std::lock_guard<SpinLock> lock(shard.mutex);
      for (Node* node = shard.first; node; node = node->next) {
        Site& site = by_site[node->site];
        site.address = node->site;
        site.bytes += static_cast<int64_t>(TailOf(UserOf(node))->size);
        site.blocks += 1;
      }
    }
  }
  std::vector<Site> sites;
  for (auto& [address, site] : by_site) sites.push_back(site);
  std::sort(sites.begin(), sites.end(), [](const Site& a, const Site& b) { return a.bytes > b.bytes; });
  if (sites.size() > n) sites.resize(n);
  return sites;
}

Usage FreeAll(ModuleId id) {
  // free() hands pages back only from the top of a heap, and small chunks go
  // to fastbins, which it neither coalesces nor trims: a million small blocks
  // freed at once would stay resident. Without fastbins each free coalesces,
  // and a large coalesced chunk trims its own arena's top (malloc_trim alone
  // trims only the main arena's top); malloc_trim then releases the free pages
  // left in the middle of every arena's heaps.
  if (LiveUsage(id).blocks == 0) return TakeAll(id, true);  // nothing to give back
  ::mallopt(M_MXFAST, 0);
  Usage usage = TakeAll(id, true);
  ::mallopt(M_MXFAST, kDefaultMaxFast);
  ::malloc_trim(0);
  return usage;
}
Usage Detach(ModuleId id) { return TakeAll(id, false); }

}  // namespace relib::agent::heap

#ifndef RELIB_NO_HEAP_INTERPOSE
// The interposed allocation functions. Exported from the worker executable
// (ENABLE_EXPORTS), so libstdc++, libc and every module bind to them.
using relib::agent::heap::Allocate;
using relib::agent::heap::IsPowerOfTwo;
using relib::agent::heap::NewOrThrow;
using relib::agent::heap::Release;
using relib::agent::heap::Reallocate;
using relib::agent::heap::TailOf;

extern "C" {

void* malloc(size_t size) { return Allocate(size, 16, __builtin_return_address(0), false); }
void free(void* p) { Release(p, __builtin_return_address(0), "free"); }
void* calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return Allocate(total, 16, __builtin_return_address(0), true);
}
void* realloc(void* p, size_t size) { return Reallocate(p, size, __builtin_return_address(0), "realloc"); }
void* reallocarray(void* p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return Reallocate(p, total, __builtin_return_address(0), "reallocarray");
}
int posix_memalign(void** out, size_t align, size_t size) {
  if (!IsPowerOfTwo(align) || align % sizeof(void*) != 0) return EINVAL;
  void* p = Allocate(size, align, __builtin_return_address(0), false);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* aligned_alloc(size_t align, size_t size) {
  if (!IsPowerOfTwo(align)) {
    errno = EINVAL;
    return nullptr;
  }
  return Allocate(size, align, __builtin_return_address(0), false);
}
void* memalign(size_t align, size_t size) {
  if (!IsPowerOfTwo(align)) {
    errno = EINVAL;
    return nullptr;
  }
  return Allocate(size, align, __builtin_return_address(0), false);
}
void* valloc(size_t size) {
  return Allocate(size, static_cast<size_t>(sysconf(_SC_PAGESIZE)), __builtin_return_address(0), false);
}
void* pvalloc(size_t size) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return Allocate((size + page - 1) / page * page, page, __builtin_return_address(0), false);
}
size_t malloc_usable_size(void* p) { return p ? TailOf(p)->size : 0; }

}  // extern "C"

void* operator new(size_t size) { return NewOrThrow(size, 16, __builtin_return_address(0)); }
void* operator new[](size_t size) { return NewOrThrow(size, 16, __builtin_return_address(0)); }
void* operator new(size_t size, const std::nothrow_t&) noexcept {
  return Allocate(size ? size : 1, 16, __builtin_return_address(0), false);
}
void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return Allocate(size ? size : 1, 16, __builtin_return_address(0), false);
}
void* operator new(size_t size, std::align_val_t align) {
  return NewOrThrow(size, static_cast<size_t>(align), __builtin_return_address(0));
}
void* operator new[](size_t size, std::align_val_t align) {
  return NewOrThrow(size, static_cast<size_t>(align), __builtin_return_address(0));
}
void* operator new(size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return Allocate(size ? size : 1, static_cast<size_t>(align), __builtin_return_address(0), false);
}
void* operator new[](size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return Allocate(size ? size : 1, static_cast<size_t>(align), __builtin_return_address(0), false);
}
void operator delete(void* p) noexcept { Release(p, __builtin_return_address(0), "operator delete"); }
void operator delete[](void* p) noexcept { Release(p, __builtin_return_address(0), "operator delete[]"); }
void operator delete(void* p, size_t) noexcept { Release(p, __builtin_return_address(0), "operator delete"); }
void operator delete[](void* p, size_t) noexcept { Release(p, __builtin_return_address(0), "operator delete[]"); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Release(p, __builtin_return_address(0), "operator delete"); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Release(p, __builtin_return_address(0), "operator delete[]"); }
void operator delete(void* p, std::align_val_t) noexcept { Release(p, __builtin_return_address(0), "operator delete"); }
void operator delete[](void* p, std::align_val_t) noexcept { Release(p, __builtin_return_address(0), "operator delete[]"); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { Release(p, __builtin_return_address(0), "operator delete"); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { Release(p, __builtin_return_address(0), "operator delete[]"); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p, __builtin_return_address(0), "operator delete"); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p, __builtin_return_address(0), "operator delete[]"); }
#endif  // RELIB_NO_HEAP_INTERPOSE
