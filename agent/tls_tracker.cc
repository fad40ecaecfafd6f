#include "agent/tls_tracker.h"

#include <atomic>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <vector>

extern "C" void* __dso_handle;

namespace relib::agent::tls {
namespace {

struct Entry {
  ModuleId module;
  pid_t tid;
  void (*dtor)(void*);
  void* object;
};

std::mutex entries_mutex;
std::vector<Entry>* entries = nullptr;  // created on first use, never destroyed

std::vector<Entry>& Entries() {
  if (entries == nullptr) entries = new std::vector<Entry>();
  return *entries;
}

thread_local bool exit_hook_registered = false;

using AtExitImpl = int (*)(void (*)(void*), void*, void*);
AtExitImpl RealAtExit() {
  static AtExitImpl real = [] {
    HostScope host;
    return reinterpret_cast<AtExitImpl>(::dlsym(RTLD_NEXT, "__cxa_thread_atexit_impl"));
  }();
  return real;
}

// Runs `mine` (taken from the registry) newest first, each in its module's scope.
void RunNewestFirst(std::vector<Entry>& mine) {
  for (auto it = mine.rbegin(); it != mine.rend(); ++it) {
    ModuleScope scope(it->module);
    it->dtor(it->object);
  }
}

std::vector<Entry> Take(pid_t tid, ModuleId module_or_host) {
  std::vector<Entry> taken;
  std::lock_guard<std::mutex> lock(entries_mutex);
  auto& all = Entries();
  auto keep = std::stable_partition(all.begin(), all.end(), [&](const Entry& e) {
    return !(e.tid == tid && (module_or_host == kHost || e.module == module_or_host));
  });
  taken.assign(keep, all.end());
  all.erase(keep, all.end());
  return taken;
}

// Destructors of each module run by RunOnThisThread since its last report.
std::atomic<int64_t> run_by_ended_threads[kMaxModules];

// Runs this thread's registered module destructors, newest first, until none
// are left (a destructor touching another thread_local registers a new one);
// with `count`, tallies them in run_by_ended_threads.
void DrainThisThread(bool count) {
  pid_t tid = static_cast<pid_t>(::gettid());
  for (;;) {
    std::vector<Entry> mine;
    {
      HostScope host;
      mine = Take(tid, kHost);
    }
    if (mine.empty()) break;
    if (count) {
      for (const Entry& e : mine) {
        if (e.module < kMaxModules) run_by_ended_threads[e.module].fetch_add(1, std::memory_order_relaxed);
      }
    }
    RunNewestFirst(mine);
    HostScope host;
    mine.clear();
    mine.shrink_to_fit();
  }
}

// Registered once per thread with glibc (under the executable's own handle,
// which is never unloaded): runs the thread's module destructors at exit.
void RunThreadExit(void*) { DrainThisThread(/*count=*/false); }

}  // namespace

void RunOnThisThread() { DrainThisThread(/*count=*/true); }

Outcome RunOrDiscard(ModuleId id) {
  Outcome outcome;
  pid_t self = static_cast<pid_t>(::gettid());
  std::vector<Entry> mine;
  {
    HostScope host;
    mine = Take(self, id);
  }
  outcome.run = static_cast<int64_t>(mine.size());
  if (id < kMaxModules) outcome.run += run_by_ended_threads[id].exchange(0, std::memory_order_relaxed);
  RunNewestFirst(mine);
  HostScope host;
  std::lock_guard<std::mutex> lock(entries_mutex);
  auto& all = Entries();
  for (const Entry& e : all) {
    if (e.module != id) continue;
    ++outcome.discarded;
    if (std::find(outcome.discarded_on.begin(), outcome.discarded_on.end(), e.tid) == outcome.discarded_on.end()) {
      outcome.discarded_on.push_back(e.tid);
    }
  }
  all.erase(std::remove_if(all.begin(), all.end(), [id](const Entry& e) { return e.module == id; }), all.end());
  return outcome;
}

int64_t Discard(ModuleId id) {
  if (id < kMaxModules) run_by_ended_threads[id].store(0, std::memory_order_relaxed);
  HostScope host;
  std::lock_guard<std::mutex> lock(entries_mutex);
  auto& all = Entries();
  auto kept = std::remove_if(all.begin(), all.end(), [id](const Entry& e) { return e.module == id; });
  int64_t dropped = all.end() - kept;
  all.erase(kept, all.end());
  return dropped;
}

}  // namespace relib::agent::tls

extern "C" int __cxa_thread_atexit_impl(void (*dtor)(void*), void* object, void* dso_handle) {
  using namespace relib::agent;
  ModuleId module = ModuleOfAddress(dso_handle);
  // glibc's list entry is its own until the thread exits, whoever's code
  // registered it: never the module's heap.
  HostScope host;
  if (module == kHost) return tls::RealAtExit()(dtor, object, dso_handle);
  if (!tls::exit_hook_registered) {
    tls::exit_hook_registered = true;
    tls::RealAtExit()(&tls::RunThreadExit, nullptr, &__dso_handle);
  }
  std::lock_guard<std::mutex> lock(tls::entries_mutex);
  tls::Entries().push_back({module, static_cast<pid_t>(::gettid()), dtor, object});
  return 0;
}
