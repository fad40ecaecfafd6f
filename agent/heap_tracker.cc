#include "agent/heap_tracker.h"

#include <errno.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

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
  uint32_t module;  // owner; 0 = host
  uint32_t offset;  // user pointer - base pointer
};
// Before the Tail of module blocks only: list membership for leak walks.
struct Node {
  Node* prev;
  Node* next;
  const void* site;
  uint64_t shard;
};
static_assert(sizeof(Tail) == 16 && sizeof(Node) == 32);
constexpr size_t kHostHeader = sizeof(Tail);
constexpr size_t kModuleHeader = sizeof(Tail) + sizeof(Node);
constexpr uint32_t kShards = 16;
// glibc's default M_MXFAST (64 * sizeof(size_t) / 4), restored after FreeAll.
constexpr int kDefaultMaxFast = 64 * sizeof(size_t) / 4;

struct alignas(64) Shard {
  std::mutex mutex;
  Node* first = nullptr;
  std::atomic<int64_t> bytes{0};
  std::atomic<int64_t> blocks{0};
};

struct ModuleHeap {
  std::atomic<bool> active{false};
  std::atomic<bool> capture_sites{false};
  Shard shards[kShards];
};
ModuleHeap modules[kMaxModules];

std::atomic<uint32_t> next_shard{0};
thread_local uint32_t thread_shard __attribute__((tls_model("initial-exec"))) = UINT32_MAX;

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
    Shard& shard = heap.shards[node->shard];
    std::lock_guard<std::mutex> lock(shard.mutex);
    Link(shard, node);
    shard.bytes.fetch_add(static_cast<int64_t>(size), std::memory_order_relaxed);
    shard.blocks.fetch_add(1, std::memory_order_relaxed);
  }
  return user;
}

void Release(void* user) {
  if (user == nullptr) return;
  Tail* tail = TailOf(user);
  uint32_t module = __atomic_load_n(&tail->module, __ATOMIC_RELAXED);
  if (module != kHost && module < kMaxModules) {
    Node* node = NodeOf(user);
    Shard& shard = modules[module].shards[node->shard % kShards];
    std::lock_guard<std::mutex> lock(shard.mutex);
    // Re-check under the lock: Detach/FreeAll may have taken the block.
    if (__atomic_load_n(&tail->module, __ATOMIC_RELAXED) == module) {
      Unlink(shard, node);
      shard.bytes.fetch_sub(static_cast<int64_t>(tail->size), std::memory_order_relaxed);
      shard.blocks.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  __libc_free(static_cast<char*>(user) - tail->offset);
}

[[maybe_unused]] void* Reallocate(void* user, size_t size, const void* site) {
  if (user == nullptr) return Allocate(size, 16, site, false);
  if (size == 0) {
    Release(user);
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
  Release(user);
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
      std::lock_guard<std::mutex> lock(shard.mutex);
      list = shard.first;
      shard.first = nullptr;
      for (Node* node = list; node; node = node->next) {
        Tail* tail = TailOf(UserOf(node));
        usage.bytes += static_cast<int64_t>(tail->size);
        usage.blocks += 1;
        __atomic_store_n(&tail->module, kHost, __ATOMIC_RELAXED);
      }
      shard.bytes = 0;
      shard.blocks = 0;
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
      std::lock_guard<std::mutex> lock(shard.mutex);
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
void free(void* p) { Release(p); }
void* calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return Allocate(total, 16, __builtin_return_address(0), true);
}
void* realloc(void* p, size_t size) { return Reallocate(p, size, __builtin_return_address(0)); }
void* reallocarray(void* p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return Reallocate(p, total, __builtin_return_address(0));
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
void operator delete(void* p) noexcept { Release(p); }
void operator delete[](void* p) noexcept { Release(p); }
void operator delete(void* p, size_t) noexcept { Release(p); }
void operator delete[](void* p, size_t) noexcept { Release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete(void* p, std::align_val_t) noexcept { Release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { Release(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { Release(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { Release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p); }
#endif  // RELIB_NO_HEAP_INTERPOSE
