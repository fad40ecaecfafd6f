#include "agent/thread_tracker.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <list>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/alt_stack.h"
#include "agent/symbolize.h"

namespace relib::agent::threads {
namespace {

struct Record {
  ModuleId module;
  std::atomic<pid_t> tid{0};
  void* (*routine)(void*);
  // For std::thread: the vtable of its state object, read at creation (the
  // object itself is freed once the callable returns).
  const void* callable_vtable = nullptr;
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
  const void* callable_vtable;
};

LiveThread Describe(const Seen& seen) {
  LiveThread thread;
  thread.tid = seen.tid;
  if (thread.tid != 0) {
    std::ifstream comm(absl::StrCat("/proc/self/task/", thread.tid, "/comm"));
    std::getline(comm, thread.name);
  }
  thread.start_routine = Symbolize(reinterpret_cast<const void*>(seen.routine));
  // std::thread: the routine is libstdc++'s; the state's vtable names the callable.
  if (seen.callable_vtable != nullptr &&
      thread.start_routine.find("execute_native_thread_routine") != std::string::npos) {
    thread.start_routine = absl::StrCat("std::thread running ", Symbolize(seen.callable_vtable));
  }
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
    if (it->module == id) seen.push_back({tid, it->routine, it->callable_vtable});
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
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(threads::registry_mutex);
    record = &threads::Registry().emplace_back();
    record->module = module;
    record->routine = routine;
    // libstdc++ passes its _State object, whose first word is the vtable.
    record->callable_vtable = arg != nullptr ? *static_cast<void* const*>(arg) : nullptr;
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
// Routed through the interposer above with glibc's own marker for a C11 start
// routine (an attr of -1), so the thread is still started, joined and exited
// with C11 semantics (an int result).
extern "C" int thrd_create(pthread_t* thread, int (*routine)(void*), void* arg) {
  const auto* c11 = reinterpret_cast<const pthread_attr_t*>(static_cast<uintptr_t>(-1));
  int rc = pthread_create(thread, c11, reinterpret_cast<void* (*)(void*)>(reinterpret_cast<void*>(routine)), arg);
  switch (rc) {
    case 0: return 0;           // thrd_success
    case ENOMEM:
    case EAGAIN: return 3;      // thrd_nomem
    case EBUSY: return 1;       // thrd_busy
    case ETIMEDOUT: return 4;   // thrd_timedout
    default: return 2;          // thrd_error
  }
}
