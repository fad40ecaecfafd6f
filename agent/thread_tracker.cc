#include "agent/thread_tracker.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <list>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <typeinfo>

#include "absl/strings/str_cat.h"
#include "agent/alt_stack.h"
#include "agent/symbolize.h"

namespace relib::agent::threads {
namespace {

// Words of a std::thread state object kept to find a function-pointer
// callable in it (its tuple holds the callable and its arguments).
constexpr size_t kStateWords = 8;

// What a std::thread's state object told at creation (the object itself is
// freed once the callable returns).
struct StdThreadState {
  const void* vtable = nullptr;       // first word of libstdc++'s _State
  uintptr_t words[kStateWords] = {};  // the words after it
  size_t word_count = 0;
};

struct Record {
  ModuleId module;
  std::atomic<pid_t> tid{0};
  void* (*routine)(void*);
  StdThreadState state;  // vtable null unless started by std::thread
};

std::mutex registry_mutex;
// std::list: records keep their address while threads point at them.
std::list<Record>* registry = nullptr;  // created on first use, never destroyed

std::list<Record>& Registry() {
  if (registry == nullptr) registry = new std::list<Record>();
  return *registry;
}

struct Start {
  Record* record;
  void* (*routine)(void*);
  void* arg;
};

// Every thread started through the interposer runs this first. `record` is
// null for host threads (nothing to attribute).
void* Trampoline(void* raw) {
  Start start = *static_cast<Start*>(raw);
  {
    HostScope host;
    delete static_cast<Start*>(raw);
  }
  // So the crash handler runs even when this thread overflows its stack.
  // Freed when the routine returns and when the thread leaves through
  // pthread_exit or cancellation (glibc unwinds this frame then).
  ScopedAltStack alt_stack;
  if (start.record != nullptr) {
    start.record->tid = static_cast<pid_t>(::gettid());
    internal::current_module = start.record->module;
  }
  return start.routine(start.arg);
}

using PthreadCreate = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
PthreadCreate RealPthreadCreate() {
  static PthreadCreate real = [] {
    HostScope host;
    return reinterpret_cast<PthreadCreate>(::dlsym(RTLD_NEXT, "pthread_create"));
  }();
  return real;
}

bool TaskExists(pid_t tid) {
  struct stat st;
  return ::stat(absl::StrCat("/proc/self/task/", tid).c_str(), &st) == 0;
}

// What Live() copies out of the registry, so describing (dladdr takes the
// dynamic loader's lock) happens without holding registry_mutex.
struct Seen {
  pid_t tid;
  void* (*routine)(void*);
  StdThreadState state;
};

// libstdc++'s text range. Its pthread_create calls come from std::thread
// (std::async and std::jthread use it), whose start routine is its own
// trampoline and whose argument is the thread's _State object. Found once:
// libstdc++ is loaded by the worker itself and never unloaded.
struct Range {
  uintptr_t start = 0;
  uintptr_t end = 0;
};
int FindLibstdcxx(dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "/libstdc++.so") == nullptr) return 0;
  auto* range = static_cast<Range*>(out);
  range->start = UINTPTR_MAX;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0) continue;
    range->start = std::min<uintptr_t>(range->start, info->dlpi_addr + ph.p_vaddr);
    range->end = std::max<uintptr_t>(range->end, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
  }
  return 1;
}
bool InLibstdcxx(const void* code) {
  static const Range range = [] {
    HostScope host;
    Range found;
    dl_iterate_phdr(&FindLibstdcxx, &found);
    return found;
  }();
  auto at = reinterpret_cast<uintptr_t>(code);
  return at >= range.start && at < range.end;
}

// Reads what identifies the callable of a std::thread whose state object is
// `arg`. REQUIRES: `routine` is libstdc++'s (then `arg` is that object, heap-
// allocated by the module's inlined std::thread constructor, alive here).
StdThreadState ReadStdThreadState(const void* arg) {
  StdThreadState state;
  const auto* words = static_cast<const uintptr_t*>(arg);
  state.vtable = reinterpret_cast<const void*>(words[0]);
  size_t size = ::malloc_usable_size(const_cast<void*>(arg));
  state.word_count = std::min(kStateWords, size / sizeof(uintptr_t) - (size >= sizeof(uintptr_t) ? 1 : 0));
  for (size_t i = 0; i < state.word_count; ++i) state.words[i] = words[1 + i];
  return state;
}

// The first template argument of the std::tuple in a demangled
// "std::thread::_State_impl<std::thread::_Invoker<std::tuple<F, Args...> > >":
// the callable's type. "" if the name has another shape.
std::string CallableType(const std::string& state_type) {
  constexpr std::string_view kTuple = "std::tuple<";
  size_t start = state_type.find(kTuple);
  if (start == std::string::npos) return "";
  start += kTuple.size();
  int depth = 0;
  for (size_t i = start; i < state_type.size(); ++i) {
    char c = state_type[i];
    if (c == '<' || c == '(' || c == '[' || c == '{') ++depth;
    if (c == '>' || c == ')' || c == ']' || c == '}') {
      if (depth == 0) return state_type.substr(start, i - start);
      --depth;
    }
    if (c == ',' && depth == 0) return state_type.substr(start, i - start);
  }
  return "";
}

// The callable a module passed to std::thread: a function by its name (found
// among the state's words: libstdc++'s tuple stores it after its arguments),
// anything else by its type — a lambda's type names the function it was
// written in. "" if the state does not look like libstdc++'s.
std::string DescribeCallable(const StdThreadState& state) {
  Dl_info info;
  if (state.vtable == nullptr || ::dladdr(state.vtable, &info) == 0) return "";
  // The vtable's word before the first virtual function: the type_info.
  const void* type_address = static_cast<const void* const*>(state.vtable)[-1];
  if (type_address == nullptr || ::dladdr(type_address, &info) == 0) return "";
  std::string state_type = Demangle(static_cast<const std::type_info*>(type_address)->name());
  std::string callable = CallableType(state_type);
  if (callable.empty()) return state_type;
  if (callable.find("(*)") != std::string::npos) {
    for (size_t i = state.word_count; i-- > 0;) {
      const void* candidate = reinterpret_cast<const void*>(state.words[i]);
      if (candidate == nullptr || ::dladdr(candidate, &info) == 0) continue;
      std::optional<Symbol> symbol = LookupSymbol(candidate);
      if (symbol && !symbol->name.empty() && symbol->symbol_offset == 0) {
        return absl::StrCat(symbol->name, " (", symbol->object, ")");
      }
    }
  }
  return callable;
}

LiveThread Describe(const Seen& seen) {
  LiveThread thread;
  thread.tid = seen.tid;
  if (thread.tid != 0) {
    std::ifstream comm(absl::StrCat("/proc/self/task/", thread.tid, "/comm"));
    std::getline(comm, thread.name);
  }
  // std::thread: the routine is libstdc++'s trampoline (nameless in a
  // stripped libstdc++); the state object names the callable.
  std::string callable = DescribeCallable(seen.state);
  thread.start_routine = callable.empty() ? Symbolize(reinterpret_cast<const void*>(seen.routine))
                                          : absl::StrCat("std::thread running ", callable);
  return thread;
}

}  // namespace

namespace {

std::vector<Seen> Alive(ModuleId id) {
  std::vector<Seen> seen;
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto& records = Registry();
  for (auto it = records.begin(); it != records.end();) {
    pid_t tid = it->tid.load();
    // tid 0: created but not yet running its trampoline; still counts.
    bool alive = tid == 0 || TaskExists(tid);
    if (!alive) {
      it = records.erase(it);
      continue;
    }
    if (it->module == id) seen.push_back({tid, it->routine, it->state});
    ++it;
  }
  return seen;
}

}  // namespace

std::vector<LiveThread> Live(ModuleId id) {
  HostScope host;
  std::vector<LiveThread> live;
  for (const Seen& seen : Alive(id)) live.push_back(Describe(seen));
  return live;
}

size_t Count(ModuleId id) {
  HostScope host;
  return Alive(id).size();
}

std::vector<LiveThread> WaitForExit(ModuleId id, std::chrono::milliseconds grace) {
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (Count(id) > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return Live(id);
}

void Forget(ModuleId id) {
  HostScope host;
  std::lock_guard<std::mutex> lock(registry_mutex);
  Registry().remove_if([id](const Record& record) { return record.module == id; });
}

}  // namespace relib::agent::threads

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*routine)(void*), void* arg) {
  using namespace relib::agent;
  ModuleId module = CurrentModule();
  auto real = threads::RealPthreadCreate();
  threads::Start* start;
  threads::Record* record = nullptr;
  if (module == kHost) {
    {
      HostScope host;
      start = new threads::Start{nullptr, routine, arg};
    }
    int rc = real(thread, attr, &threads::Trampoline, start);
    if (rc != 0) delete start;
    return rc;
  }
  // Only libstdc++'s own start routine says what `arg` is (its _State
  // object); any other `arg` may be any value at all, even no pointer.
  // Read before taking registry_mutex: the first check asks the dynamic
  // loader, whose lock a thread in dlopen holds while its constructors may
  // be creating threads.
  threads::StdThreadState state;
  if (arg != nullptr && threads::InLibstdcxx(reinterpret_cast<const void*>(routine))) {
    state = threads::ReadStdThreadState(arg);
  }
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(threads::registry_mutex);
    record = &threads::Registry().emplace_back();
    record->module = module;
    record->routine = routine;
    record->state = state;
    start = new threads::Start{record, routine, arg};
  }
  int rc = real(thread, attr, &threads::Trampoline, start);
  if (rc != 0) {
    HostScope host;
    delete start;
    std::lock_guard<std::mutex> lock(threads::registry_mutex);
    threads::Registry().remove_if([record](const threads::Record& r) { return &r == record; });
  }
  return rc;
}

// C11 threads: glibc's thrd_create starts a thread without calling
// pthread_create, so module threads started that way would escape the checks.
// Routed through the interposer above with an adapter that returns the int
// result as glibc's own thrd_join and thrd_exit expect it ((void*)(uintptr_t)).
namespace {

struct C11Start {
  int (*routine)(void*);
  void* arg;
};

void* RunC11(void* raw) {
  C11Start start = *static_cast<C11Start*>(raw);
  {
    relib::agent::HostScope host;
    delete static_cast<C11Start*>(raw);
  }
  return reinterpret_cast<void*>(static_cast<uintptr_t>(static_cast<unsigned>(start.routine(start.arg))));
}

}  // namespace

extern "C" int thrd_create(pthread_t* thread, int (*routine)(void*), void* arg) {
  C11Start* start;
  {
    relib::agent::HostScope host;
    start = new C11Start{routine, arg};
  }
  int rc = pthread_create(thread, nullptr, &RunC11, start);
  if (rc != 0) {
    relib::agent::HostScope host;
    delete start;
  }
  switch (rc) {
    case 0: return 0;           // thrd_success
    case ENOMEM: return 3;      // thrd_nomem
    case EBUSY: return 1;       // thrd_busy
    case ETIMEDOUT: return 4;   // thrd_timedout
    default: return 2;          // thrd_error
  }
}
