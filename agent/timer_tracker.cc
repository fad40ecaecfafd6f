#include "agent/timer_tracker.h"

#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <atomic>
#include <list>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/alt_stack.h"
#include "agent/symbolize.h"
#include "agent/fork_lock.h"

namespace relib::agent::timers {
namespace {

struct Timer {
  ModuleId module = kHost;
  timer_t id{};
  int notify = SIGEV_NONE;
  int signal = 0;
  void (*function)(sigval) = nullptr;  // SIGEV_THREAD only
  sigval value{};
  std::atomic<int> in_flight{0};
  std::atomic<bool> deleted{false};
  // Threads glibc started for its notifications: they may still run the
  // module's thread-local and key destructors after the function returned.
  std::vector<pid_t> notifiers;  // guarded by timers_mutex
};

std::mutex timers_mutex;
[[maybe_unused]] const bool timers_mutex_held_across_fork = HoldAcrossFork<timers_mutex>();
// Live timers of modules. Records of SIGEV_THREAD timers are never freed: a
// notification glibc already started may still read one after the delete.
std::list<Timer>* timers = nullptr;   // created on first use, never destroyed
std::list<Timer>* retired = nullptr;

std::list<Timer>& Live() {
  if (timers == nullptr) timers = new std::list<Timer>();
  return *timers;
}
std::list<Timer>& Retired() {
  if (retired == nullptr) retired = new std::list<Timer>();
  return *retired;
}

template <typename T>
T Real(const char* name) {
  HostScope host;
  return reinterpret_cast<T>(::dlsym(RTLD_NEXT, name));
}
using TimerCreate = int (*)(clockid_t, sigevent*, timer_t*);
using TimerDelete = int (*)(timer_t);
TimerCreate RealCreate() {
  static TimerCreate real = Real<TimerCreate>("timer_create");
  return real;
}
TimerDelete RealDelete() {
  static TimerDelete real = Real<TimerDelete>("timer_delete");
  return real;
}

bool TaskExists(pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/task/%d", static_cast<int>(tid));
  struct stat st;
  return ::stat(path, &st) == 0;
}

void Notify(sigval value) {
  auto* timer = static_cast<Timer*>(value.sival_ptr);
  // Pairs with DeleteAll: either it sees this notification in flight, or
  // this notification sees the timer deleted (both sequentially consistent).
  timer->in_flight.fetch_add(1);
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(timers_mutex);
    timer->notifiers.push_back(static_cast<pid_t>(::gettid()));
  }
  if (!timer->deleted.load()) {
    ScopedAltStack alt_stack;
    ModuleScope scope(timer->module);
    timer->function(timer->value);
  }
  timer->in_flight.fetch_sub(1);
}

std::string Describe(const Timer& timer) {
  switch (timer.notify) {
    case SIGEV_THREAD:
      return absl::StrCat("SIGEV_THREAD timer -> ", Symbolize(reinterpret_cast<const void*>(timer.function)));
    case SIGEV_SIGNAL:
    case SIGEV_THREAD_ID: {
      const char* name = sigabbrev_np(timer.signal);
      return absl::StrCat("timer signalling ", name ? absl::StrCat("SIG", name) : absl::StrCat(timer.signal));
    }
    default:
      return "timer without notification";
  }
}

}  // namespace

Outcome DeleteAll(ModuleId id, std::chrono::milliseconds grace) {
  HostScope host;
  std::vector<Timer*> mine;            // its SIGEV_THREAD timers, deleted here
  std::vector<Timer*> retired_before;  // deleted by the module itself
  std::list<Timer> signalling;         // its other timers, deleted here
  {
    std::lock_guard<std::mutex> lock(timers_mutex);
    for (auto it = Live().begin(); it != Live().end();) {
      auto next = std::next(it);
      if (it->module == id) {
        it->deleted.store(true);
        RealDelete()(it->id);
        if (it->notify == SIGEV_THREAD) {
          Retired().splice(Retired().end(), Live(), it);
          mine.push_back(&Retired().back());
        } else {
          Timer& copy = signalling.emplace_back();
          copy.notify = it->notify;
          copy.signal = it->signal;
          Live().erase(it);
        }
      }
      it = next;
    }
    for (Timer& timer : Retired()) {
      if (timer.module == id && std::find(mine.begin(), mine.end(), &timer) == mine.end()) {
        retired_before.push_back(&timer);
      }
    }
  }
  // Quiet once no notification is inside module code and every thread glibc
  // started for one is gone (its thread-local destructors ran).
  auto quiet = [](Timer* timer) {
    if (timer->in_flight.load() > 0) return false;
    std::lock_guard<std::mutex> lock(timers_mutex);
    std::erase_if(timer->notifiers, [](pid_t tid) { return !TaskExists(tid); });
    return timer->notifiers.empty();
  };
  Outcome outcome;
  auto deadline = std::chrono::steady_clock::now() + grace;
  std::vector<Timer*> all = mine;
  all.insert(all.end(), retired_before.begin(), retired_before.end());
  for (Timer* timer : all) {
    while (!quiet(timer) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!quiet(timer)) {
      ++outcome.in_flight;
    } else {
      std::lock_guard<std::mutex> lock(timers_mutex);
      timer->module = kHost;  // done with: a later module with this id never waits on it
    }
  }
  for (Timer* timer : mine) outcome.deleted.push_back({"timer", Describe(*timer), "deleted"});
  for (const Timer& timer : signalling) outcome.deleted.push_back({"timer", Describe(timer), "deleted"});
  return outcome;
}

}  // namespace relib::agent::timers

extern "C" int timer_create(clockid_t clock, sigevent* event, timer_t* id) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::timers;
  ModuleId module = CurrentModule();
  bool thread = event != nullptr && event->sigev_notify == SIGEV_THREAD;
  if (module == kHost && thread) module = ModuleOfAddress(reinterpret_cast<const void*>(event->sigev_notify_function));
  if (module == kHost) return RealCreate()(clock, event, id);
  HostScope host;
  std::lock_guard<std::mutex> lock(timers_mutex);
  Timer& timer = Live().emplace_back();
  timer.module = module;
  // No sigevent means SIGEV_SIGNAL with SIGALRM.
  timer.notify = event ? event->sigev_notify : SIGEV_SIGNAL;
  timer.signal = event ? event->sigev_signo : SIGALRM;
  int rc;
  if (thread) {
    timer.function = event->sigev_notify_function;
    timer.value = event->sigev_value;
    sigevent ours = *event;
    ours.sigev_notify_function = &Notify;
    ours.sigev_value.sival_ptr = &timer;
    rc = RealCreate()(clock, &ours, &timer.id);
  } else {
    rc = RealCreate()(clock, event, &timer.id);
  }
  if (rc != 0) {
    Live().pop_back();
    return rc;
  }
  *id = timer.id;
  return 0;
}

extern "C" int timer_delete(timer_t id) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::timers;
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(timers_mutex);
    for (auto it = Live().begin(); it != Live().end(); ++it) {
      if (it->id != id) continue;
      it->deleted.store(true);
      int rc = RealDelete()(id);
      if (it->notify == SIGEV_THREAD) {
        Retired().splice(Retired().end(), Live(), it);
      } else {
        Live().erase(it);
      }
      return rc;
    }
  }
  return RealDelete()(id);
}
