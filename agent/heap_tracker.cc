#include "agent/heap_tracker.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "agent/crash_note.h"

// glibc's allocator under its own names. noplt: called through the GOT
// directly, not through a PLT stub (one jump less per malloc and per free).
// noexcept (they never throw): operator delete, noexcept itself, can then
// end in a jump to them instead of a call inside a frame.
extern "C" {
__attribute__((noplt)) void* __libc_malloc(size_t) noexcept;
__attribute__((noplt)) void __libc_free(void*) noexcept;
__attribute__((noplt)) void* __libc_calloc(size_t, size_t) noexcept;
__attribute__((noplt)) void* __libc_realloc(void*, size_t) noexcept;
__attribute__((noplt)) void* __libc_memalign(size_t, size_t) noexcept;
}

namespace relib::agent::heap {
namespace {

// ---- Blocks ----
//
// A block is the chunk glibc returns (its alignment, its size class), asked
// for kTrailer bytes more than the caller wants. The last 8 bytes of the
// chunk's usable size hold the trailer:
//   host block    address ^ kHostSalt
//   freed block   address ^ kFreedSalt (so module code freeing it again is caught)
//   module block  kModuleTag | record << kSlotBits | slot: the Entry holding
//                 the module, the requested size and the allocation site.
// A trailer rather than a header: any header moves requests of 1017-1032
// bytes (1 KiB among them) out of glibc's tcache onto its slower bins, and a
// request that is a multiple of 16 has 8 bytes of slack in its chunk anyway,
// so the trailer costs such a request neither memory nor a size class.
constexpr size_t kTrailer = sizeof(uint64_t);
constexpr uint64_t kHostSalt = 0xa5c396e14f27d08bull;
constexpr uint64_t kFreedSalt = 0x5ac31e69f4728db0ull;
constexpr uint64_t kTagMask = 0xffffull << 48;  // user addresses are below 2^47
constexpr uint64_t kModuleTag = 0xc35aull << 48;
constexpr int kSlotBits = 26;  // live module blocks per record (thread)
constexpr int kRecordBits = 16;
constexpr uint32_t kMaxSlots = 1u << kSlotBits;
constexpr uint32_t kMaxRecords = 1u << kRecordBits;
constexpr uint64_t kUnusedBits = ~kTagMask & ~((uint64_t{1} << (kSlotBits + kRecordBits)) - 1);
// Below this nothing is ever mapped (vm.mmap_min_addr), so no block either.
constexpr uintptr_t kLowestBlock = 65536;
// glibc's default M_MXFAST (64 * sizeof(size_t) / 4), restored after FreeAll.
constexpr int kDefaultMaxFast = 64 * sizeof(size_t) / 4;

// glibc's chunk header: the word before the user pointer is the chunk size,
// flags in its low 3 bits (IS_MMAPPED = 2, NON_MAIN_ARENA = 4). The usable
// size is the chunk size less 8, less 16 for an mmapped chunk (glibc's
// musable(); heap_tracker_test checks it against glibc's malloc_usable_size).
constexpr uint64_t kChunkMmapped = 2;
constexpr uint64_t kChunkNonMainArena = 4;
inline size_t ChunkUsable(uint64_t header) { return (header & ~uint64_t{7}) - ((header & kChunkMmapped) ? 16 : 8); }
inline uint64_t ChunkHeader(const void* user) { return static_cast<const uint64_t*>(user)[-1]; }
inline size_t UsableSize(const void* user) { return ChunkUsable(ChunkHeader(user)); }
inline uint64_t* TrailerAt(void* user, size_t usable) {
  return reinterpret_cast<uint64_t*>(static_cast<char*>(user) + usable - kTrailer);
}
inline uint64_t* TrailerOf(void* user) { return TrailerAt(user, UsableSize(user)); }
// Trailers are read by a thread freeing a block while Detach may rewrite them.
inline uint64_t LoadTrailer(const uint64_t* trailer) { return __atomic_load_n(trailer, __ATOMIC_RELAXED); }
inline void StoreTrailer(uint64_t* trailer, uint64_t value) { __atomic_store_n(trailer, value, __ATOMIC_RELAXED); }
inline uint64_t HostTrailer(const void* user) { return reinterpret_cast<uintptr_t>(user) ^ kHostSalt; }
inline uint64_t FreedTrailer(const void* user) { return reinterpret_cast<uintptr_t>(user) ^ kFreedSalt; }
// A word that may be a chunk header (validation reads it before trusting it).
// Its size (header & ~7) is in [32, 2^44) and a multiple of 16, and it is
// not both mmapped and of a non-main arena. Written as two compares with no
// branch between them (Classify makes it on every validated free): the flags
// are below 8, so 32 <= header < 2^44 says the same of the size; and
// header & 14 holds bit 3 (size % 16) and the two flags, of which only 0, 2
// and 4 are plausible.
inline bool PlausibleChunk(uint64_t header) {
  return (header - 32 < (uint64_t{1} << 44) - 32) & ((header & 14) < 6);
}

// Loads of the words around a pointer that module code frees, on free's
// inline path: a wild pointer may make them fault. Each such load is one
// instruction whose address is listed in the section relib_heap_probes (an
// offset from the entry, so no relocation), and the crash handler names the
// cause when it finds the faulting address there (FaultNote): the same crash
// note as SetCrashNote around the loads would give, with no two thread-local
// stores on every free. volatile: never speculated ahead of the checks that
// guard it, never merged with another load. Elsewhere (other architectures,
// the slow paths) the crash note is set around the loads instead.
#if defined(__x86_64__)
#define RELIB_HEAP_PROBES 1
inline uint64_t ProbeLoad(const uint64_t* word) {
  uint64_t value;
  asm volatile(
      "0: movq %1, %0\n\t"
      ".pushsection relib_heap_probes, \"aR\"\n\t"
      ".balign 4\n\t"
      ".long 0b - .\n\t"
      ".popsection"
      : "=r"(value)
      : "m"(*word));
  return value;
}
#else
inline uint64_t ProbeLoad(const uint64_t* word) { return __atomic_load_n(word, __ATOMIC_RELAXED); }
#endif

// ---- Records: each thread's books ----
//
// A thread that allocates module memory owns a Record: a table of entries
// (one per live module block it allocated) and per-module counters. The
// owner changes them with plain loads and stores and no atomic
// read-modify-write: that is what makes the hot path cheap. Others touch a
// record only
//  - to free one of its blocks (a remote free): under the record's
//    remote_lock, the entry is cleared and its slot queued for the owner; the
//    bytes go to remote_usage;
//  - to walk it (TopSites, FreeAll, Detach, fork): the walker excludes every
//    owner with an asymmetric Dekker handshake. The owner marks itself busy
//    and then reads the record's gate with no fence between (a compiler
//    barrier); the walker sets the gate's kWalkPending bit, runs
//    membarrier(PRIVATE_EXPEDITED), which puts a full barrier into every
//    running thread of the process, and waits until each record is not busy.
//    Either the owner saw the bit and takes registry_mutex (held by the
//    walker), or the walker saw it busy and waits. Without membarrier (old
//    kernel, seccomp) the bit stays set and owners always take
//    registry_mutex instead.
//    The gate is also the high bits of the record's module trailers, which
//    the owner needs anyway: free's inline path compares a trailer with it
//    (one compare says "a block of this record" and "no walk pending"), and
//    malloc's reads it to write the trailer; neither reads a flag of its own.
// A thread without a record points at no_record, on which a walk is always
// pending and which no trailer names: the inline paths find "slow" through
// the checks they make anyway, with no null check.
// A record outlives its thread: at thread exit it is released, its live
// entries stay (they are still the modules' blocks), and the next thread that
// needs a record adopts it.

struct Entry {
  std::atomic<void*> block;  // the live block; null while the slot is free
  uint64_t size;             // requested size
  union {
    const void* site;  // while live: caller of the allocation, when captured
    Entry* next;       // while free: the next free entry
  };
  uint32_t module;
  uint32_t slot;  // its own index, for the trailer
};
static_assert(sizeof(Entry) == 32);
constexpr int kChunkBits = 16;  // entries are mapped 65536 (2 MiB, touched as used) at a time
constexpr uint32_t kChunkSlots = 1u << kChunkBits;
constexpr uint32_t kChunks = kMaxSlots >> kChunkBits;

// Per-module byte and block counts, written by one thread at a time, read by
// any (LiveUsage), with no atomic read-modify-write. On x86-64 each word is
// changed by one add with a memory operand (not locked: one aligned 8-byte
// store, which a reader sees whole); that measured ~0.2-0.3 ns a malloc/free
// pair faster than one 16-byte vector add of both words, and that ~0.5 ns
// faster than a load, an add and a store per word. Two arrays rather than a
// {bytes, blocks} pair per module: an 8-byte stride is a scaled address
// (record, module * 8), one add per word; a 16-byte stride costs a shift and
// an address add more per update. A reader loads each word atomically and
// may see one word updated and not yet the other, which LiveUsage allows
// (it may lag).
struct Counters {
  int64_t bytes[kMaxModules] = {};
  int64_t blocks[kMaxModules] = {};
#if defined(__x86_64__)
  // The scaled addresses written out: given "+m"(bytes[module]), GCC 12
  // computes module * 8 and this + bytes into registers first (a shift and
  // an lea per call). The two arrays are the asm's memory operands, so the
  // compiler knows what it changes. A Record's own counters sit at its
  // start, so `this` is the record pointer already in a register.
  void Add(uint32_t module, int64_t size, int64_t count) {
    asm volatile(
        "addq %[size], (%[self],%[module],8)\n\t"
        "addq %[count], %c[blocks](%[self],%[module],8)"
        : "+m"(bytes), "+m"(blocks)
        : [self] "r"(this), [module] "r"(static_cast<uint64_t>(module)), [size] "er"(size), [count] "er"(count),
          [blocks] "i"(sizeof(bytes)));
  }
  // One block of `size` bytes less (a sub, where Add would need a neg first).
  void Remove(uint32_t module, uint64_t size) {
    asm volatile(
        "subq %[size], (%[self],%[module],8)\n\t"
        "subq $1, %c[blocks](%[self],%[module],8)"
        : "+m"(bytes), "+m"(blocks)
        : [self] "r"(this), [module] "r"(static_cast<uint64_t>(module)), [size] "r"(size),
          [blocks] "i"(sizeof(bytes)));
  }
#else
  void Add(uint32_t module, int64_t size, int64_t count) {
    __atomic_store_n(&bytes[module], bytes[module] + size, __ATOMIC_RELAXED);
    __atomic_store_n(&blocks[module], blocks[module] + count, __ATOMIC_RELAXED);
  }
  void Remove(uint32_t module, uint64_t size) { Add(module, -static_cast<int64_t>(size), -1); }
#endif
  void Reset(uint32_t module) {
    __atomic_store_n(&bytes[module], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&blocks[module], 0, __ATOMIC_RELAXED);
  }
  int64_t Bytes(uint32_t module) const { return __atomic_load_n(&bytes[module], __ATOMIC_RELAXED); }
  int64_t Blocks(uint32_t module) const { return __atomic_load_n(&blocks[module], __ATOMIC_RELAXED); }
};

// A test-and-test-and-set lock (remote frees only; never on the owner's path).
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

struct Record {
  // First, so that the owner's Counters::Add addresses them from the record
  // pointer with no offset to add.
  alignas(64) Counters usage;  // owner
  // The owner's line.
  alignas(64) std::atomic<uint32_t> busy{0};
  uint32_t index = 0;  // in `records`
  // Its module trailers of the first chunk's slots >> kChunkBits (tag,
  // index, zero slot bits above the first chunk), with kWalkPending set while
  // a walk excludes the owner (always on no_record). Written only under
  // registry_mutex.
  std::atomic<uint64_t> gate{0};
  Entry* free_head = nullptr;      // owner (or a walker)
  Entry* first_chunk = nullptr;    // chunks[0], mapped with the record, for the owner
  std::atomic<uint32_t> used{0};   // slots handed out so far; walkers scan below it
  std::atomic<bool> taken{false};  // a live thread owns it
  // Remote frees.
  alignas(64) SpinLock remote_lock;
  std::atomic<Entry*> remote_head{nullptr};  // entries freed by other threads, for the owner
  alignas(64) Counters remote_usage;  // under remote_lock (negative: frees by others)
  std::atomic<Entry*> chunks[kChunks] = {};

  Record() = default;
  struct Placeholder {};
  constexpr explicit Record(Placeholder) : gate{~uint64_t{0}} {}
};
// What Counters' asm writes out: blocks right after bytes.
static_assert(offsetof(Counters, blocks) == sizeof(Counters::bytes));

// The record of every thread that has none (see above). Never in `records`;
// its busy flag is written by a thread's first module-scope malloc (which
// adopts a record) and read by none; free's inline path never writes it.
constinit Record no_record{Record::Placeholder{}};

// Records are never unmapped; `records[i]` is set before record_count
// covers it. registry_mutex serialises new records, adoption, walks and the
// owners that found a walk pending.
std::atomic<Record*> records[kMaxRecords];
std::atomic<uint32_t> record_count{0};
std::mutex registry_mutex;
constinit thread_local Record* my_record __attribute__((tls_model("local-exec"))) = &no_record;
pthread_key_t record_key;
bool record_key_created = false;  // under registry_mutex

bool RegisterMembarrier() {
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 &&
         ::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
}
// Set before main (no module code runs earlier) and in a fork child (one
// thread). Without it, kWalkPending stays set in every record: owners always
// take registry_mutex (slower, still correct).
bool asymmetric_barrier = RegisterMembarrier();
// Above every trailer >> kChunkBits (< 2^48): a gate with it set matches none.
constexpr uint64_t kWalkPending = uint64_t{1} << 63;
inline bool WalkPending(uint64_t gate) { return (gate & kWalkPending) != 0; }

Entry* EntryAt(const Record* record, uint32_t slot) {
  return record->chunks[slot >> kChunkBits].load(std::memory_order_acquire) + (slot & (kChunkSlots - 1));
}
void SetUsed(Record* record, uint32_t used) { record->used.store(used, std::memory_order_release); }
uint64_t ModuleTrailer(uint32_t record, uint32_t slot) {
  return kModuleTag | uint64_t{record} << kSlotBits | slot;
}
// A record's gate while no walk is pending.
uint64_t IdleGate(const Record* record) {
  return ModuleTrailer(record->index, 0) >> kChunkBits | (asymmetric_barrier ? 0 : kWalkPending);
}
uint32_t RecordOf(uint64_t trailer) { return static_cast<uint32_t>(trailer >> kSlotBits) & (kMaxRecords - 1); }
uint32_t SlotOf(uint64_t trailer) { return static_cast<uint32_t>(trailer) & (kMaxSlots - 1); }

// The entry a trailer names, checking every step (the trailer may be any
// bytes: validation of a pointer module code frees); nullptr if none.
Entry* FindEntry(uint64_t trailer) {
  if ((trailer & kTagMask) != kModuleTag || (trailer & kUnusedBits) != 0) return nullptr;
  uint32_t index = RecordOf(trailer), slot = SlotOf(trailer);
  if (index >= record_count.load(std::memory_order_acquire)) return nullptr;
  Record* record = records[index].load(std::memory_order_acquire);
  if (slot >= record->used.load(std::memory_order_acquire)) return nullptr;
  Entry* chunk = record->chunks[slot >> kChunkBits].load(std::memory_order_acquire);
  return chunk ? chunk + (slot & (kChunkSlots - 1)) : nullptr;
}

// The owner's side of the handshake (see Records above).
class OwnerSection {
 public:
  explicit OwnerSection(Record* record) : record_(record) {
    record->busy.store(1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the walker's membarrier is the fence
    if (WalkPending(record->gate.load(std::memory_order_acquire))) [[unlikely]] {
      record->busy.store(0, std::memory_order_release);
      registry_mutex.lock();
      locked_ = true;
    }
  }
  ~OwnerSection() {
    if (locked_) {
      registry_mutex.unlock();
    } else {
      record_->busy.store(0, std::memory_order_release);
    }
  }
  OwnerSection(const OwnerSection&) = delete;
  OwnerSection& operator=(const OwnerSection&) = delete;

 private:
  Record* record_;
  bool locked_ = false;
};

// The walker's side: every record's owner is outside its section while a
// Walk lives. REQUIRES: registry_mutex held.
void ExcludeOwners(uint32_t count) {
  for (uint32_t i = 0; i < count; ++i) {
    Record* record = records[i].load(std::memory_order_relaxed);
    record->gate.store(IdleGate(record) | kWalkPending, std::memory_order_relaxed);
  }
  if (asymmetric_barrier) ::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  for (uint32_t i = 0; i < count; ++i) {
    Record* record = records[i].load(std::memory_order_relaxed);
    for (int spins = 0; record->busy.load(std::memory_order_acquire); ++spins) {
      if (spins < 64) {
        __builtin_ia32_pause();
      } else {
        ::sched_yield();  // the owner was preempted inside its section
      }
    }
  }
}
void AdmitOwners(uint32_t count) {
  for (uint32_t i = 0; i < count; ++i) {
    Record* record = records[i].load(std::memory_order_relaxed);
    record->gate.store(IdleGate(record), std::memory_order_release);
  }
}

class Walk {
 public:
  Walk() : lock_(registry_mutex), count_(record_count.load(std::memory_order_acquire)) { ExcludeOwners(count_); }
  ~Walk() { AdmitOwners(count_); }
  uint32_t count() const { return count_; }
  Walk(const Walk&) = delete;
  Walk& operator=(const Walk&) = delete;

 private:
  std::lock_guard<std::mutex> lock_;
  uint32_t count_;
};

// The tracker's own memory: host scope, so the mapping tracker never counts
// it as the module's (whose mappings the unmap policy removes at unload).
void* MapZeroed(size_t bytes) {
  HostScope host;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

// A chunk of kChunkSlots entries, zero (nothing live), or nullptr.
Entry* MapEntries() {
  auto* entries = static_cast<Entry*>(MapZeroed(sizeof(Entry) * kChunkSlots));
  // Resident as used, 4 KiB at a time, never a whole huge page at once.
  if (entries != nullptr) ::madvise(entries, sizeof(Entry) * kChunkSlots, MADV_NOHUGEPAGE);
  return entries;
}

// At thread exit (a pthread key destructor): the record is free to adopt.
void ReleaseRecord(void* record) {
  my_record = &no_record;
  static_cast<Record*>(record)->taken.store(false, std::memory_order_release);
}

// The calling thread's record, adopting a released one or mapping a new one;
// nullptr if none can be had (kMaxRecords threads hold one, or no memory).
Record* AdoptRecord() {
  HostScope host;  // pthread_setspecific may allocate
  std::lock_guard<std::mutex> lock(registry_mutex);
  if (!record_key_created) {
    if (::pthread_key_create(&record_key, &ReleaseRecord) != 0) return nullptr;
    record_key_created = true;
  }
  Record* record = nullptr;
  uint32_t count = record_count.load(std::memory_order_relaxed);
  for (uint32_t i = 0; i < count && record == nullptr; ++i) {
    Record* candidate = records[i].load(std::memory_order_relaxed);
    if (!candidate->taken.load(std::memory_order_acquire)) record = candidate;
  }
  if (record == nullptr) {
    if (count == kMaxRecords) return nullptr;
    void* memory = MapZeroed(sizeof(Record));
    if (memory == nullptr) return nullptr;
    // The first chunk from the start: free's inline path indexes it with any
    // slot below kChunkSlots that a trailer naming this record gives.
    Entry* entries = MapEntries();
    if (entries == nullptr) {
      ::munmap(memory, sizeof(Record));
      return nullptr;
    }
    record = new (memory) Record;
    record->index = count;
    record->chunks[0].store(entries, std::memory_order_relaxed);
    record->first_chunk = entries;
    record->gate.store(IdleGate(record), std::memory_order_relaxed);
    records[count].store(record, std::memory_order_release);
    record_count.store(count + 1, std::memory_order_release);
  }
  record->taken.store(true, std::memory_order_relaxed);
  ::pthread_setspecific(record_key, record);
  my_record = record;
  return record;
}

// More free slots for the owner when its list is empty: those other threads
// freed, else up to 64 never used. Returns the new list's head or nullptr.
// REQUIRES: inside the owner's section.
Entry* RefillSlots(Record* record) {
  if (record->remote_head.load(std::memory_order_relaxed) != nullptr) {
    std::lock_guard<SpinLock> lock(record->remote_lock);
    Entry* head = record->remote_head.load(std::memory_order_relaxed);
    record->remote_head.store(nullptr, std::memory_order_relaxed);
    return head;
  }
  uint32_t used = record->used.load(std::memory_order_relaxed);
  if (used == kMaxSlots) return nullptr;
  uint32_t chunk = used >> kChunkBits;
  if (record->chunks[chunk].load(std::memory_order_relaxed) == nullptr) {
    Entry* entries = MapEntries();
    if (entries == nullptr) return nullptr;
    record->chunks[chunk].store(entries, std::memory_order_release);
  }
  uint32_t end = std::min(used + 64, (chunk + 1) << kChunkBits);
  for (uint32_t slot = used; slot < end; ++slot) {
    Entry* entry = EntryAt(record, slot);
    entry->slot = slot;
    entry->next = slot + 1 < end ? entry + 1 : nullptr;
  }
  SetUsed(record, end);
  return EntryAt(record, used);
}

// Per module: whether it is tracked and whether sites are captured, in one
// byte so the allocation path reads both with one load.
constexpr uint8_t kActive = 1;
constexpr uint8_t kCaptureSites = 2;
struct ModuleHeap {
  std::atomic<uint8_t> flags{0};
};
ModuleHeap modules[kMaxModules];

// Enters a fresh block of `module` in the calling thread's record and writes
// its trailer; false if no entry can be had (the caller frees the block).
// Every case (a thread with no record yet, a walk pending, no free slot);
// the common one is TrackOwnBlockFast.
__attribute__((noinline)) bool TrackModuleBlock(void* user, uint64_t* trailer, size_t size, ModuleId module, const void* site) {
  Record* record = my_record;
  if (record == &no_record) [[unlikely]] {
    record = AdoptRecord();
    if (record == nullptr) return false;
  }
  uint32_t slot;
  {
    OwnerSection section(record);
    Entry* entry = record->free_head;
    if (entry == nullptr) [[unlikely]] {
      entry = RefillSlots(record);
      if (entry == nullptr) return false;
    }
    record->free_head = entry->next;
    slot = entry->slot;
    entry->size = size;
    entry->site = (modules[module].flags.load(std::memory_order_relaxed) & kCaptureSites) ? site : nullptr;
    entry->module = module;
    entry->block.store(user, std::memory_order_release);
    record->usage.Add(module, static_cast<int64_t>(size), 1);
    // Inside the section: a walker (FreeAll, Detach) that finds the entry
    // live must find its trailer written too, or FreeAll frees the block
    // before this store lands in it, and Detach's host trailer is overwritten.
    StoreTrailer(trailer, ModuleTrailer(record->index, slot));
  }
  return true;
}

// The owner's side of the handshake written out inline (OwnerSection's
// common case): marks the record busy and returns its gate. If the gate says
// a walk is pending (WalkPending), the caller leaves at once and takes the
// path that waits for it. No call on this path, so the interposers keep
// their values in registers and save none.
inline __attribute__((always_inline)) uint64_t EnterOwnSection(Record* record) {
  record->busy.store(1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);  // the walker's membarrier is the fence
  return record->gate.load(std::memory_order_acquire);
}
inline __attribute__((always_inline)) void LeaveOwnSection(Record* record) {
  record->busy.store(0, std::memory_order_release);
}

// TrackModuleBlock's common case: the thread has a record, no walk is
// pending, a free slot is at hand. False (nothing changed) otherwise.
// `recorded_site` is the allocation site, or nullptr when capture is off.
inline __attribute__((always_inline)) bool TrackOwnBlockFast(void* user, uint64_t* trailer, size_t size,
                                                             ModuleId module, const void* recorded_site) {
  Record* record = my_record;
  uint64_t gate = EnterOwnSection(record);
  // free_head only once no walk is pending: a walker (TakeAll, Shrink)
  // rewrites it meanwhile.
  if (WalkPending(gate)) [[unlikely]] {  // also a thread with no record
    LeaveOwnSection(record);
    return false;
  }
  Entry* entry = record->free_head;
  if (entry == nullptr) [[unlikely]] {
    LeaveOwnSection(record);
    return false;
  }
  record->free_head = entry->next;
  uint32_t slot = entry->slot;
  entry->size = size;
  entry->site = recorded_site;
  entry->module = module;
  entry->block.store(user, std::memory_order_release);
  record->usage.Add(module, static_cast<int64_t>(size), 1);
  StoreTrailer(trailer, gate << kChunkBits | slot);  // in the section, as in TrackModuleBlock
  LeaveOwnSection(record);
  return true;
}

// glibc's block for `size` bytes and the trailer, without the trailer written.
inline void* RawAllocate(size_t size, size_t align, bool zero) {
  if (size > SIZE_MAX - 64) [[unlikely]] {
    errno = ENOMEM;
    return nullptr;
  }
  if (align <= 16) [[likely]] return zero ? __libc_calloc(1, size + kTrailer) : __libc_malloc(size + kTrailer);
  void* user = __libc_memalign(align, size + kTrailer);
  if (user && zero) std::memset(user, 0, size + kTrailer);
  return user;
}

inline void* AllocateHostBlock(size_t size, size_t align, bool zero) {
  void* user = RawAllocate(size, align, zero);
  if (user != nullptr) [[likely]] StoreTrailer(TrailerOf(user), HostTrailer(user));
  return user;
}

[[maybe_unused]] __attribute__((noinline)) void* AllocateInModuleScope(size_t size, size_t align, const void* site, bool zero) {
  ModuleId module = CurrentModule();
  uint8_t flags = modules[module].flags.load(std::memory_order_relaxed);
  if (!(flags & kActive) || IsInDynamicLoader(site)) {
    return AllocateHostBlock(size, align, zero);
  }
  void* user = RawAllocate(size, align, zero);
  if (user == nullptr) [[unlikely]] return nullptr;
  uint64_t* trailer = TrailerOf(user);
  const void* recorded_site = (flags & kCaptureSites) ? site : nullptr;
  if (TrackOwnBlockFast(user, trailer, size, module, recorded_site)) [[likely]] return user;
  if (!TrackModuleBlock(user, trailer, size, module, site)) [[unlikely]] {
    __libc_free(user);
    errno = ENOMEM;
    return nullptr;
  }
  return user;
}

// The block that could not be entered by TrackOwnBlockFast: every other case.
__attribute__((noinline)) void* TrackOrDrop(void* user, size_t size, ModuleId module, const void* site) {
  if (!TrackModuleBlock(user, TrailerOf(user), size, module, site)) [[unlikely]] {
    __libc_free(user);
    errno = ENOMEM;
    return nullptr;
  }
  return user;
}

// AllocateInModuleScope for malloc and operator new (16-aligned, not
// zeroed) when the module is tracked without capturing sites: the same
// steps, with only the size live across glibc's call (the site is not
// recorded), so the common case saves one register and makes no other call.
// Inlined into the interposers (one call layer less: ~0.6 ns a pair in
// module scope, no change measured in host scope); every other case (sites
// captured, the module not tracked, the dynamic loader allocating, no entry
// at hand) is out of line.
[[maybe_unused]] inline __attribute__((always_inline)) void* MallocInModuleScope(size_t size, const void* site) {
  ModuleId module = CurrentModule();
  if (modules[module].flags.load(std::memory_order_relaxed) != kActive || IsInDynamicLoader(site)) [[unlikely]] {
    return AllocateInModuleScope(size, 16, site, false);
  }
  void* user = RawAllocate(size, 16, false);
  if (user == nullptr) [[unlikely]] return nullptr;
  // The thread's module is the same after glibc's call (scopes nest).
  module = CurrentModule();
  if (TrackOwnBlockFast(user, TrailerOf(user), size, module, nullptr)) [[likely]] return user;
  return TrackOrDrop(user, size, module, nullptr);
}

// Host scope (the common case) takes the inline path: glibc's call and a
// trailer write.
[[maybe_unused]] inline __attribute__((always_inline)) void* Allocate(size_t size, size_t align, const void* site, bool zero) {
  if (CurrentModule() == kHost) [[likely]] return AllocateHostBlock(size, align, zero);
  if (__builtin_constant_p(align) && align == 16 && __builtin_constant_p(zero) && !zero) {
    return MallocInModuleScope(size, site);
  }
  return AllocateInModuleScope(size, align, site, zero);
}

// A block about to be freed or reallocated: where its trailer is, what it
// says, and its entry if it is a module block.
struct Located {
  uint64_t* trailer;
  uint64_t value;
  Entry* entry;  // nullptr for a host block
};

// REQUIRES: `user` is a live block (host code frees it: not validated).
Located Locate(void* user) {
  Located block;
  block.trailer = TrailerOf(user);
  block.value = LoadTrailer(block.trailer);
  block.entry = nullptr;
  if ((block.value & kTagMask) == kModuleTag) {
    block.entry = EntryAt(records[RecordOf(block.value)].load(std::memory_order_relaxed), SlotOf(block.value));
  }
  return block;
}

// Takes `user` out of its record. False if it is no longer there: Detach
// made it a host block (or FreeAll freed it) meanwhile.
bool ForgetModuleBlock(void* user, const Located& block) {
  Record* record = records[RecordOf(block.value)].load(std::memory_order_relaxed);
  Entry* entry = block.entry;
  if (record == my_record) {
    OwnerSection section(record);
    if (entry->block.load(std::memory_order_relaxed) != user) return false;
    record->usage.Add(entry->module, -static_cast<int64_t>(entry->size), -1);
    entry->block.store(nullptr, std::memory_order_relaxed);
    entry->next = record->free_head;
    record->free_head = entry;
    return true;
  }
  std::lock_guard<SpinLock> lock(record->remote_lock);
  if (entry->block.load(std::memory_order_relaxed) != user) return false;
  record->remote_usage.Add(entry->module, -static_cast<int64_t>(entry->size), -1);
  entry->block.store(nullptr, std::memory_order_relaxed);
  entry->next = record->remote_head.load(std::memory_order_relaxed);
  record->remote_head.store(entry, std::memory_order_release);
  return true;
}

void ReleaseLocated(void* user, const Located& block) {
  if (block.entry != nullptr && !ForgetModuleBlock(user, block)) [[unlikely]] {
    // Detached meanwhile: free it as the host block it became. Freed by
    // FreeAll: nothing left to free.
    if (LoadTrailer(block.trailer) != HostTrailer(user)) return;
  }
  // So a second free by module code is recognised (glibc's own bookkeeping
  // overwrites the first 16 bytes of a freed chunk, never its last 8).
  StoreTrailer(block.trailer, FreedTrailer(user));
  __libc_free(user);
}

// ---- Validation of frees made by module code ----

std::atomic<InvalidFreePolicy> invalid_free_policy{InvalidFreePolicy::kAbort};

enum class Verdict { kOwn, kHost, kOtherModule, kFreed, kNotABlock };

constexpr char kUnreadableHeader[] =
    "invalid free by module code: not a heap block (the memory around the pointer is not mapped)";
// The same fault on free's inline path, which does not ask who called free
// (module code, or libstdc++/libc freeing on the module's behalf).
constexpr char kUnreadableHeaderInModuleScope[] =
    "invalid free in module scope: not a heap block (the memory around the pointer is not mapped)";

// True if the trailer `trailer` of the block whose header word is at
// `header` is on that word's page: readable if the header was.
inline bool TrailerOnHeaderPage(const void* user, const uint64_t* trailer) {
  return ((reinterpret_cast<uintptr_t>(user) - kTrailer) ^ reinterpret_cast<uintptr_t>(trailer)) < 4096;
}

// Chunk headers (size and flags) up to which free's inline path reads the
// trailer without checking that it is mapped: glibc's default mmap threshold
// (128 KiB), below which every block comes from an arena. Exact for real
// blocks, whose memory is mapped. NOT exact for a wild pointer: a word before
// it that looks like a size below this, within that distance of the end of
// its mapping (or of a PROT_NONE arena tail), still faults, under
// --invalid-free leak too; the crash note names the cause. Farther trailers
// (every size glibc cannot hand out from an arena by default, and the
// review's 1 MiB case) go to ReadTrailerSafely.
constexpr uint64_t kInlineTrailerReach = (uint64_t{128} << 10) + 32;

// PlausibleChunk(header) && header < kInlineTrailerReach, in two tests for
// free's inline path: header - 32 is below 2^17 and has bit 3 clear (the
// size is a multiple of 16: subtracting 32 leaves bits 0-4 as they are),
// which is one test against a mask that fits an instruction's immediate,
// and not both flags. (Written as the two functions, GCC made four compares.)
static_assert(kInlineTrailerReach - 32 == uint64_t{1} << 17);
inline bool PlausibleInReach(uint64_t header) {
  constexpr uint64_t kOutside = ~((uint64_t{1} << 17) - 1) | 8;
  return ((header - 32) & kOutside) == 0 && (header & 6) != 6;
}

// Reads the trailer a plausible `header` points at: the header is any word
// before a pointer module code frees, so the trailer may be far away (up to
// 2^44 bytes), in an unmapped or PROT_NONE page. Read directly on the
// header's page or within kInlineTrailerReach (as free's inline path does:
// remote frees of ordinary blocks take this path too); farther, by
// process_vm_readv on this process, which fails with EFAULT instead of
// faulting. False if it cannot be read (or the syscall is refused, e.g. by
// seccomp: then the free is refused too, never done blind).
bool ReadTrailerSafely(void* user, uint64_t header, const uint64_t* trailer, uint64_t* value) {
  if (header < kInlineTrailerReach || TrailerOnHeaderPage(user, trailer)) {
    *value = LoadTrailer(trailer);
    return true;
  }
  iovec local{value, sizeof(*value)};
  iovec remote{const_cast<uint64_t*>(trailer), sizeof(*value)};
  return ::process_vm_readv(::getpid(), &local, 1, &remote, 1, 0) == static_cast<ssize_t>(sizeof(*value));
}

// What `user`, freed by code of `module`, is. Reads the chunk header and the
// trailer only after the cheap checks, trusts neither before checking it,
// and reads the trailer only if it is readable (ReadTrailerSafely); a wild
// pointer whose header word is unmapped can still fault, which the crash
// note then explains. `owner` receives the owning module of kOtherModule;
// `block` is filled for kOwn.
Verdict Classify(void* user, ModuleId module, ModuleId* owner, Located* block) {
  auto address = reinterpret_cast<uintptr_t>(user);
  // Every block this allocator hands out is 16-aligned (glibc's alignment, or more).
  if (address % 16 != 0 || address < kLowestBlock) return Verdict::kNotABlock;
  SetCrashNote(kUnreadableHeader);
  Verdict verdict = Verdict::kNotABlock;
  uint64_t header = ChunkHeader(user);
  uint64_t value = 0;
  uint64_t* trailer = TrailerAt(user, ChunkUsable(header));
  if (PlausibleChunk(header) && ReadTrailerSafely(user, header, trailer, &value)) {
    if (Entry* entry = FindEntry(value); entry != nullptr) {
      if (entry->block.load(std::memory_order_acquire) == user) {
        *owner = entry->module;
        verdict = entry->module == module ? Verdict::kOwn : Verdict::kOtherModule;
        *block = Located{trailer, value, entry};
      }
    } else if (value == HostTrailer(user)) {
      verdict = Verdict::kHost;
    } else if (value == FreedTrailer(user)) {
      verdict = Verdict::kFreed;
    }
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

thread_local Line invalid_free_note __attribute__((tls_model("local-exec")));

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

// Locates `user` for a free or realloc by `caller`; false if it must not be
// freed (after OnInvalidFree returned under kLeak).
bool LocateForFree(void* user, const void* caller, const char* function, Located* block) {
  ModuleId module;
  if (!FromModuleCode(caller, &module)) {
    *block = Locate(user);
    return true;
  }
  ModuleId owner = kHost;
  Verdict verdict = Classify(user, module, &owner, block);
  if (verdict == Verdict::kOwn) [[likely]] return true;
  OnInvalidFree(user, module, verdict, owner, function);
  return false;
}

// A free in module scope, every case: validated when the module's own code
// frees (caller in the module's range), otherwise released as it is.
// noexcept, like every function free's paths call (operator delete's jumps).
[[maybe_unused]] __attribute__((noinline)) void ReleaseInModuleScopeSlow(void* user, const void* caller,
                                                                         const char* function) noexcept {
  if (user == nullptr) return;
  ModuleId module = CurrentModule();
  if (!InModule(module, caller)) {
    ReleaseLocated(user, Locate(user));
    return;
  }
  ModuleId owner = kHost;
  Located block;
  Verdict verdict = Classify(user, module, &owner, &block);
  if (verdict != Verdict::kOwn) {
    OnInvalidFree(user, module, verdict, owner, function);
    return;
  }
  ReleaseLocated(user, block);
}

// The common case of a free in module scope, checked and released in one
// pass over the thread's own record: a live block of the running module
// that its thread allocated. Anything else goes to ReleaseInModuleScopeSlow.
// Inlined into the interposers, like MallocInModuleScope.
//
// Whether the caller is the module's code (whether the free is validated)
// is asked only on the slow path: for such a block a validated free and an
// unvalidated one do the same thing (release it), and every other pointer
// takes the slow path, which asks. The words read here may be anywhere (a
// wild pointer): they are read by ProbeLoad, so a fault names its cause.
[[maybe_unused]] inline __attribute__((always_inline)) void ReleaseInModuleScope(void* user, const void* caller,
                                                                     const char* function) {
  ModuleId module = CurrentModule();
  auto address = reinterpret_cast<uintptr_t>(user);
  Record* record = my_record;
  // A thread with no record holds no block this path could free; it goes to
  // the slow path before EnterOwnSection, whose store to no_record's busy
  // flag (on gate's line, shared by every such thread) would make each
  // module-scope free of theirs move that line between cores.
  if (address % 16 != 0 || address < kLowestBlock || record == &no_record) [[unlikely]] {
    ReleaseInModuleScopeSlow(user, caller, function);
    return;
  }
#ifndef RELIB_HEAP_PROBES
  SetCrashNote(kUnreadableHeader);
#endif
  uint64_t header = ProbeLoad(static_cast<const uint64_t*>(user) - 1);
  uint64_t* trailer = TrailerAt(user, ChunkUsable(header));
  // A trailer far from the header may be unmapped (the header is any word
  // before a pointer the module frees): beyond kInlineTrailerReach the slow
  // path reads it safely (a syscall, ~1.4 us here: too slow for every block
  // that crosses a page, so nearer trailers are read here, see there). A
  // word that no glibc chunk has as header (PlausibleChunk: a size below 32,
  // whose trailer would lie before the header, or a size that is not a
  // multiple of 16, or mmapped together with a non-main arena) goes there
  // too and is never followed: the slow path refuses it as "not a heap
  // block" without a load. The flags matter here although this path frees
  // only a pointer its entry holds: the load comes before the entry is
  // found, and a header such as 0x1008 before a PROT_NONE page would fault
  // here where the slow path refuses the free (dealloc_test's
  // ImplausibleHeaderBeforeAProtNonePage*). Two tests (PlausibleInReach).
  if (!PlausibleInReach(header)) [[unlikely]] {
#ifndef RELIB_HEAP_PROBES
    SetCrashNote(nullptr);
#endif
    ReleaseInModuleScopeSlow(user, caller, function);
    return;
  }
  uint64_t value = ProbeLoad(trailer);
#ifndef RELIB_HEAP_PROBES
  SetCrashNote(nullptr);
#endif
  // The tag, the unused bits, the record index, a slot in the first chunk
  // (a thread with more than 65536 live blocks takes the slow path for the
  // rest) and "no walk pending" in one compare with the gate (no_record's
  // matches no trailer), after marking the record busy. The entry is then
  // mapped (the first chunk lives as long as the record), and it holds
  // `user` only if the block is live: slots never handed out are zero.
  uint64_t gate = EnterOwnSection(record);
  if ((value >> kChunkBits) != gate) [[unlikely]] {
    LeaveOwnSection(record);
    ReleaseInModuleScopeSlow(user, caller, function);  // also waits for a walk
    return;
  }
  Entry* entry = record->first_chunk + (value & (kChunkSlots - 1));
  if (entry->block.load(std::memory_order_relaxed) != user || entry->module != module) [[unlikely]] {
    LeaveOwnSection(record);
    ReleaseInModuleScopeSlow(user, caller, function);  // another module's block, or Detach took it meanwhile
    return;
  }
  record->usage.Remove(module, entry->size);
  entry->block.store(nullptr, std::memory_order_relaxed);
  entry->next = record->free_head;
  record->free_head = entry;
  LeaveOwnSection(record);
  StoreTrailer(trailer, FreedTrailer(user));
  __libc_free(user);
}

[[maybe_unused]] __attribute__((noinline)) void ReleaseModuleBlockFromHost(void* user) noexcept {
  ReleaseLocated(user, Locate(user));
}

// Host scope (the common case): one trailer read and write around glibc's free.
[[maybe_unused]] inline __attribute__((always_inline)) void Release(void* user, const void* caller, const char* function) {
  if (CurrentModule() != kHost) [[unlikely]] {
    ReleaseInModuleScope(user, caller, function);
    return;
  }
  if (user == nullptr) return;
  uint64_t* trailer = TrailerOf(user);
  if ((LoadTrailer(trailer) & kTagMask) == kModuleTag) [[unlikely]] {
    ReleaseModuleBlockFromHost(user);
    return;
  }
  StoreTrailer(trailer, FreedTrailer(user));
  __libc_free(user);
}

[[maybe_unused]] void* Reallocate(void* user, size_t size, const void* site, const char* function) {
  if (user == nullptr) return Allocate(size, 16, site, false);
  Located block;
  if (!LocateForFree(user, site, function, &block)) {
    errno = EINVAL;
    return nullptr;
  }
  if (size == 0) {
    ReleaseLocated(user, block);
    return nullptr;
  }
  if (block.entry == nullptr && CurrentModule() == kHost) {
    if (size > SIZE_MAX - 64) {
      errno = ENOMEM;
      return nullptr;
    }
    void* moved = __libc_realloc(user, size + kTrailer);
    if (moved == nullptr) return nullptr;
    StoreTrailer(TrailerOf(moved), HostTrailer(moved));
    return moved;
  }
  size_t old_size = block.entry ? block.entry->size : UsableSize(user) - kTrailer;
  void* moved = Allocate(size, 16, site, false);
  if (moved == nullptr) return nullptr;
  std::memcpy(moved, user, std::min(size, old_size));
  ReleaseLocated(user, block);
  return moved;
}

[[maybe_unused]] size_t UsableBytes(void* user) {
  if (user == nullptr) return 0;
  Located block = Locate(user);
  if (block.entry != nullptr && block.entry->block.load(std::memory_order_relaxed) == user) return block.entry->size;
  return UsableSize(user) - kTrailer;
}

[[maybe_unused]] bool IsPowerOfTwo(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

// operator new after a failed allocation: the new_handler loop. Its
// retries record no allocation site (with --capture-sites, a block allocated
// after the new_handler freed memory is listed under an unknown site): the
// site is then not live across glibc's call in operator new's common path,
// which saves it two registers (as malloc's).
[[maybe_unused]] __attribute__((noinline)) void* NewOrThrowSlow(size_t size, size_t align) {
  for (;;) {
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
    void* p = Allocate(size, align, nullptr, false);
    if (p) return p;
  }
}

// Inline, so that operator new with its constant alignment takes malloc's
// path (MallocInModuleScope).
[[maybe_unused]] inline __attribute__((always_inline)) void* NewOrThrow(size_t size, size_t align, const void* site) {
  if (size == 0) size = 1;
  void* p = Allocate(size, align, site, false);
  if (p != nullptr) [[likely]] return p;
  return NewOrThrowSlow(size, align);
}

// Hands back the pages of a record's entries from `keep` up to `used` (a
// module that leaked a million blocks leaves 32 MB of entries otherwise) and
// rebuilds its free list below `keep`. REQUIRES: a Walk and the record's
// remote_lock; no entry at or above `keep` is live.
void Shrink(Record* record, uint32_t keep, uint32_t used) {
  Entry* head = nullptr;
  for (uint32_t slot = keep; slot-- > 0;) {
    Entry* entry = EntryAt(record, slot);
    if (entry->block.load(std::memory_order_relaxed) != nullptr) continue;
    entry->next = head;
    head = entry;
  }
  record->free_head = head;
  record->remote_head.store(nullptr, std::memory_order_relaxed);
  SetUsed(record, keep);
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (uint32_t chunk = keep >> kChunkBits; chunk <= (used - 1) >> kChunkBits; ++chunk) {
    Entry* entries = record->chunks[chunk].load(std::memory_order_relaxed);
    uint32_t begin = std::max(keep, chunk << kChunkBits) - (chunk << kChunkBits);
    uint32_t end = std::min(used, (chunk + 1) << kChunkBits) - (chunk << kChunkBits);
    uintptr_t from = (reinterpret_cast<uintptr_t>(entries + begin) + page - 1) / page * page;
    uintptr_t to = reinterpret_cast<uintptr_t>(entries + end) / page * page;
    if (from < to) ::madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
  }
}

// Takes every block of `id` out of the records; `free_blocks` frees them,
// otherwise they become host blocks.
Usage TakeAll(ModuleId id, bool free_blocks) {
  Usage usage;
  if (id == kHost || id >= kMaxModules) return usage;
  modules[id].flags.fetch_and(static_cast<uint8_t>(~kActive));
  Walk walk;
  for (uint32_t i = 0; i < walk.count(); ++i) {
    Record* record = records[i].load(std::memory_order_relaxed);
    std::lock_guard<SpinLock> lock(record->remote_lock);
    uint32_t used = record->used.load(std::memory_order_relaxed);
    uint32_t live_end = 0;  // one past the last entry still live
    for (uint32_t slot = 0; slot < used; ++slot) {
      Entry* entry = EntryAt(record, slot);
      void* user = entry->block.load(std::memory_order_relaxed);
      if (user != nullptr && entry->module != id) live_end = slot + 1;
      if (user == nullptr || entry->module != id) continue;
      usage.bytes += static_cast<int64_t>(entry->size);
      usage.blocks += 1;
      entry->block.store(nullptr, std::memory_order_relaxed);
      entry->next = record->free_head;  // the owner is excluded
      record->free_head = entry;
      uint64_t* trailer = TrailerOf(user);
      if (free_blocks) {
        StoreTrailer(trailer, FreedTrailer(user));
        __libc_free(user);
      } else {
        StoreTrailer(trailer, HostTrailer(user));
      }
    }
    record->usage.Reset(id);
    record->remote_usage.Reset(id);
    if (live_end < used) Shrink(record, live_end, used);
  }
  return usage;
}

// fork(): the child must find no lock held and no record half-changed by a
// thread that does not exist there. The parent quiesces every owner as a
// walker does and holds every remote lock across the fork.
uint32_t forked_records = 0;
void PrepareFork() {
  registry_mutex.lock();
  forked_records = record_count.load(std::memory_order_acquire);
  ExcludeOwners(forked_records);
  for (uint32_t i = 0; i < forked_records; ++i) records[i].load(std::memory_order_relaxed)->remote_lock.lock();
}
void ParentAfterFork() {
  for (uint32_t i = 0; i < forked_records; ++i) records[i].load(std::memory_order_relaxed)->remote_lock.unlock();
  AdmitOwners(forked_records);
  registry_mutex.unlock();
}
void ChildAfterFork() {
  asymmetric_barrier = RegisterMembarrier();
  for (uint32_t i = 0; i < forked_records; ++i) {
    Record* record = records[i].load(std::memory_order_relaxed);
    record->remote_lock.unlock();
    // Threads other than this one are gone: their records are free to adopt.
    if (record != my_record) record->taken.store(false, std::memory_order_relaxed);
  }
  AdmitOwners(forked_records);
  registry_mutex.unlock();
}
[[maybe_unused]] const bool fork_handlers_installed =
    ::pthread_atfork(&PrepareFork, &ParentAfterFork, &ChildAfterFork) == 0;

}  // namespace

#ifdef RELIB_NO_HEAP_INTERPOSE
bool Enabled() { return false; }
#else
bool Enabled() { return true; }
#endif

void SetInvalidFreePolicy(InvalidFreePolicy policy) { invalid_free_policy.store(policy); }

#ifdef RELIB_HEAP_PROBES
// The linker's bounds of the probe table (a section named like a C
// identifier gets them). Weak: a build that interposes nothing has no table.
extern "C" const int32_t __start_relib_heap_probes[] __attribute__((weak, visibility("hidden")));
extern "C" const int32_t __stop_relib_heap_probes[] __attribute__((weak, visibility("hidden")));

const char* FaultNote(const void* pc) {
  for (const int32_t* probe = __start_relib_heap_probes; probe < __stop_relib_heap_probes; ++probe) {
    if (reinterpret_cast<const char*>(probe) + *probe == pc) return kUnreadableHeaderInModuleScope;
  }
  return nullptr;
}
#else
const char* FaultNote(const void*) { return nullptr; }
#endif

void StartTracking(ModuleId id, bool capture_sites) {
  if (id == kHost || id >= kMaxModules) return;
  modules[id].flags.store(kActive | (capture_sites ? kCaptureSites : 0));
}

Usage LiveUsage(ModuleId id) {
  Usage usage;
  if (id == kHost || id >= kMaxModules) return usage;
  uint32_t count = record_count.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < count; ++i) {
    const Record* record = records[i].load(std::memory_order_acquire);
    for (const Counters* counters : {&record->usage, &record->remote_usage}) {
      usage.bytes += counters->Bytes(id);
      usage.blocks += counters->Blocks(id);
    }
  }
  return usage;
}

std::vector<Site> TopSites(ModuleId id, size_t n) {
  HostScope host;  // the map and the vector are the agent's
  std::map<const void*, Site> by_site;
  if (id != kHost && id < kMaxModules) {
    Walk walk;
    for (uint32_t i = 0; i < walk.count(); ++i) {
      Record* record = records[i].load(std::memory_order_relaxed);
      std::lock_guard<SpinLock> lock(record->remote_lock);  // a remote free reuses `site`
      uint32_t used = record->used.load(std::memory_order_relaxed);
      for (uint32_t slot = 0; slot < used; ++slot) {
        const Entry* entry = EntryAt(record, slot);
        if (entry->block.load(std::memory_order_relaxed) == nullptr || entry->module != id) continue;
        Site& site = by_site[entry->site];
        site.address = entry->site;
        site.bytes += static_cast<int64_t>(entry->size);
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

void WhileWalkingForTesting(void (*during)(void*), void* context) {
  Walk walk;
  during(context);
}

}  // namespace relib::agent::heap

#ifndef RELIB_NO_HEAP_INTERPOSE
// The interposed allocation functions. Exported from the worker executable
// (ENABLE_EXPORTS), so libstdc++, libc and every module bind to them.
using relib::agent::heap::Allocate;
using relib::agent::heap::IsPowerOfTwo;
using relib::agent::heap::NewOrThrow;
using relib::agent::heap::Release;
using relib::agent::heap::Reallocate;
using relib::agent::heap::UsableBytes;

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
size_t malloc_usable_size(void* p) { return UsableBytes(p); }

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
