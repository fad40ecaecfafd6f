// Which module the calling thread is running code for. Every tracker in the
// worker (heap, threads, thread-locals, fds, keys, mappings) attributes what
// it sees to this id.
//
// Why global state: malloc, pthread_create and friends are interposed
// process-wide and cannot be handed a context object; the thread-local id is
// the only channel. Ids are small integers (slots) so the hot paths can index
// fixed arrays without locks.
#ifndef RELIB_AGENT_MODULE_CONTEXT_H_
#define RELIB_AGENT_MODULE_CONTEXT_H_

#include <atomic>
#include <cstdint>

namespace relib::agent {

// 0 means "the host" (agent, worker main, libraries): nothing is attributed.
using ModuleId = uint32_t;
inline constexpr ModuleId kHost = 0;
inline constexpr ModuleId kMaxModules = 256;  // ids are 1..kMaxModules-1
// Owner of a resource found by a catch-all scan that could be any of several
// modules' (their code ran concurrently): attributed to none of them.
inline constexpr ModuleId kUnattributed = kMaxModules;

// Remembers which modules ran code since the last Take(): what a catch-all
// scan (fds, children) may attribute an unknown resource to. Thread-safe;
// Note is one relaxed load (and an atomic OR the first time).
class RanSince {
 public:
  void Note(ModuleId id);
  // The one module that ran since the last Take, kHost if none did,
  // kUnattributed if several did; starts a new period.
  ModuleId Take();

 private:
  std::atomic<uint64_t> bits_[(kMaxModules + 63) / 64] = {};
};

namespace internal {
// local-exec: readable from inside malloc without calling malloc, at a fixed
// offset from the thread pointer (the agent is only ever linked into the host
// executable, agent/CMakeLists.txt), with no GOT load;
// constinit: no thread-local initialisation check on each read.
extern constinit thread_local ModuleId current_module __attribute__((tls_model("local-exec")));
// Read inline by malloc and free (InModule, IsInDynamicLoader).
struct ModuleRange {
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
};
extern ModuleRange module_ranges[kMaxModules];
extern std::atomic<uintptr_t> loader_start;
extern std::atomic<uintptr_t> loader_end;
}  // namespace internal

inline ModuleId CurrentModule() { return internal::current_module; }

// Sets the calling thread's module for the scope's lifetime. Nestable.
class ModuleScope {
 public:
  // The compiler barriers keep the stores where they are: the compiler knows
  // that malloc and operator new read no program state, and would otherwise
  // sink or drop a store to a (constinit) thread-local around such a call.
  explicit ModuleScope(ModuleId id) : previous_(internal::current_module) {
    internal::current_module = id;
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~ModuleScope() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    internal::current_module = previous_;
  }
  ModuleScope(const ModuleScope&) = delete;
  ModuleScope& operator=(const ModuleScope&) = delete;

 private:
  ModuleId previous_;
};

// Host code inside an interposed call made by a module (bookkeeping
// allocations must never be attributed to the module).
class HostScope : public ModuleScope {
 public:
  HostScope() : ModuleScope(kHost) {}
};

// Hands out module ids. Thread-safe. Returns 0 when all are taken.
ModuleId AcquireModuleId();
void ReleaseModuleId(ModuleId id);

// Address range [start, end) of a loaded module's mapped segments, so that
// addresses (TLS dso handles, allocation sites) can be mapped to modules.
void SetModuleRange(ModuleId id, uintptr_t start, uintptr_t end);
// The module whose range contains `address`, or kHost.
ModuleId ModuleOfAddress(const void* address);
// True if `address` lies in the range of module `id`.
inline bool InModule(ModuleId id, const void* address) {
  if (id == kHost || id >= kMaxModules) return false;
  auto a = reinterpret_cast<uintptr_t>(address);
  uintptr_t start = internal::module_ranges[id].start.load(std::memory_order_relaxed);
  return start != 0 && a >= start && a < internal::module_ranges[id].end.load(std::memory_order_relaxed);
}

// Human name of a module id, readable from a signal handler (NUL-terminated,
// at most 63 characters; "" for unknown ids).
void SetModuleName(ModuleId id, const char* name);
const char* ModuleName(ModuleId id);

// The dynamic loader's own text range: allocations it makes (link maps, TLS
// blocks) are never attributed to a module even inside module scope.
inline bool IsInDynamicLoader(const void* address) {
  auto a = reinterpret_cast<uintptr_t>(address);
  return a >= internal::loader_start.load(std::memory_order_relaxed) &&
         a < internal::loader_end.load(std::memory_order_relaxed);
}

}  // namespace relib::agent

#endif  // RELIB_AGENT_MODULE_CONTEXT_H_
