#include "agent/exit_handler_tracker.h"

#include <dlfcn.h>

#include <list>
#include <mutex>
#include <vector>

#include "agent/symbolize.h"
#include "agent/fork_lock.h"

extern "C" int __cxa_atexit(void (*fn)(void*), void* arg, void* dso) noexcept;
extern "C" void __cxa_finalize(void* dso);

namespace relib::agent::exits {
namespace {

enum class Kind { kExit, kOnExit, kQuickExit, kFork };

struct Handler {
  ModuleId module;
  Kind kind;
  const void* function;  // for the report
  void* call;            // what to call: fn(arg, status) or fn(status, arg)
  void* arg;
  bool dead = false;     // dropped: run as a no-op if glibc still calls it
};

std::mutex handlers_mutex;
[[maybe_unused]] const bool handlers_mutex_held_across_fork = HoldAcrossFork<handlers_mutex>();
std::list<Handler>* handlers = nullptr;  // created on first use, never destroyed

std::list<Handler>& Handlers() {
  if (handlers == nullptr) handlers = new std::list<Handler>();
  return *handlers;
}

// Registrations with a dso handle kept back by Hold, in order.
struct HeldRegistration {
  ModuleId module;
  void (*fn)(void*);
  void* arg;
  void* dso;
};
bool holding[kMaxModules + 1] = {};                     // ABSL_GUARDED_BY(handlers_mutex)
std::vector<HeldRegistration>* held = nullptr;          // ABSL_GUARDED_BY(handlers_mutex); never freed

// Distinct addresses that stand for each module on glibc's lists (never a
// real library's dso handle).
char tokens[kMaxModules];
void* Token(ModuleId id) { return &tokens[id]; }

template <typename T>
T Real(const char* name) {
  HostScope host;
  return reinterpret_cast<T>(::dlsym(RTLD_NEXT, name));
}
using CxaAtexit = int (*)(void (*)(void*), void*, void*);
using CxaAtQuickExit = int (*)(void (*)(void*), void*);
using RegisterAtfork = int (*)(void (*)(), void (*)(), void (*)(), void*);

// Who a registration without a dso handle belongs to (kHost: nobody).
ModuleId Owner(const void* function) {
  ModuleId owner = CurrentModule();
  return owner != kHost ? owner : ModuleOfAddress(function);
}

// glibc calls __cxa_atexit functions as fn(arg, status).
void RunRecorded(void* raw, int status) {
  auto* handler = static_cast<Handler*>(raw);
  if (handler->dead) return;
  handler->dead = true;
  ModuleScope scope(handler->module);
  if (handler->kind == Kind::kOnExit) {
    reinterpret_cast<void (*)(int, void*)>(handler->call)(status, handler->arg);
  } else {
    reinterpret_cast<void (*)(void*, int)>(handler->call)(handler->arg, status);
  }
}

int RegisterExit(Kind kind, void* call, void* arg) {
  ModuleId owner = Owner(call);
  static CxaAtexit real = Real<CxaAtexit>("__cxa_atexit");
  // glibc's lists grow with blocks it allocates: process state, never the
  // module's heap (the leak policy would free them under glibc's feet).
  HostScope host;
  if (owner == kHost) {
    if (kind == Kind::kOnExit) {
      static auto real_on_exit = Real<int (*)(void (*)(int, void*), void*)>("on_exit");
      return real_on_exit(reinterpret_cast<void (*)(int, void*)>(call), arg);
    }
    return real(reinterpret_cast<void (*)(void*)>(call), arg, nullptr);
  }
  Handler* handler;
  {
    std::lock_guard<std::mutex> lock(handlers_mutex);
    handler = &Handlers().emplace_back(Handler{owner, kind, call, call, arg});
  }
  // glibc passes (arg, status) to every __cxa_atexit function.
  void (*run)(void*, int) = &RunRecorded;
  int rc = real(reinterpret_cast<void (*)(void*)>(reinterpret_cast<void*>(run)), handler, Token(owner));
  if (rc != 0) {
    std::lock_guard<std::mutex> lock(handlers_mutex);
    Handlers().remove_if([handler](const Handler& h) { return &h == handler; });
  }
  return rc;
}

void Record(ModuleId owner, Kind kind, const void* function) {
  HostScope host;
  std::lock_guard<std::mutex> lock(handlers_mutex);
  Handlers().push_back(Handler{owner, kind, function, nullptr, nullptr, true});
}

std::list<Handler> Take(ModuleId id) {
  HostScope host;
  std::lock_guard<std::mutex> lock(handlers_mutex);
  std::list<Handler> taken;
  for (auto it = Handlers().begin(); it != Handlers().end();) {
    auto next = std::next(it);
    if (it->module == id) taken.splice(taken.end(), Handlers(), it);
    it = next;
  }
  return taken;
}

}  // namespace

std::vector<CodeReference> Finalize(ModuleId id) {
  // Does for the token what dlclose does for a library: runs its exit
  // handlers newest first, drops quick_exit ones, unregisters fork handlers.
  {
    ModuleScope scope(id);
    __cxa_finalize(Token(id));
  }
  std::vector<CodeReference> references;
  HostScope host;
  for (const Handler& handler : Take(id)) {
    std::string what = Symbolize(handler.function);
    switch (handler.kind) {
      case Kind::kExit: references.push_back({"exit handler", "__cxa_atexit/atexit -> " + what, "ran"}); break;
      case Kind::kOnExit: references.push_back({"exit handler", "on_exit -> " + what, "ran"}); break;
      case Kind::kQuickExit: references.push_back({"quick_exit handler", what, "discarded"}); break;
      case Kind::kFork: references.push_back({"fork handler", what, "unregistered"}); break;
    }
  }
  return references;
}

void Hold(ModuleId id) {
  if (id == kHost || id >= kMaxModules) return;
  std::lock_guard<std::mutex> lock(handlers_mutex);
  holding[id] = true;
}

void Release(ModuleId id) {
  if (id == kHost || id >= kMaxModules) return;
  static CxaAtexit real = Real<CxaAtexit>("__cxa_atexit");
  HostScope host;  // the held list and glibc's list blocks are process state
  // glibc gets the held registrations under the lock that decides whether a
  // registration is held: one made meanwhile (a thread the new version's
  // constructor started) waits, and lands after them, as it would have
  // without the hold. glibc's __cxa_atexit takes only its own lock, and
  // nothing holding that lock takes this one (it calls handlers unlocked).
  std::lock_guard<std::mutex> lock(handlers_mutex);
  if (!holding[id]) return;
  holding[id] = false;
  if (held == nullptr) return;
  for (const HeldRegistration& registration : *held) {
    if (registration.module == id) real(registration.fn, registration.arg, registration.dso);
  }
  std::erase_if(*held, [id](const HeldRegistration& registration) { return registration.module == id; });
}

int Discard(ModuleId id) {
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(handlers_mutex);
    for (Handler& handler : Handlers()) {
      if (handler.module == id) handler.dead = true;
    }
  }
  // glibc calls the dead exit records as no-ops and drops the rest; after
  // that it holds no pointer to the records and they can go.
  __cxa_finalize(Token(id));
  return static_cast<int>(Take(id).size());
}

}  // namespace relib::agent::exits

using relib::agent::kHost;
using relib::agent::exits::Kind;

extern "C" {

int __cxa_atexit(void (*fn)(void*), void* arg, void* dso) noexcept {
  using namespace relib::agent::exits;
  if (dso != nullptr) {
    const relib::agent::ModuleId module = relib::agent::CurrentModule();
    relib::agent::HostScope host;  // glibc's list blocks and the held ones are process state
    if (module != kHost && module < relib::agent::kMaxModules) {
      std::lock_guard<std::mutex> lock(handlers_mutex);
      if (holding[module]) {  // see Hold: glibc gets it once the old version's slots are free
        if (held == nullptr) held = new std::vector<HeldRegistration>();
        held->push_back(HeldRegistration{module, fn, arg, dso});
        return 0;
      }
    }
    static CxaAtexit real = Real<CxaAtexit>("__cxa_atexit");
    return real(fn, arg, dso);  // glibc drops it at that library's dlclose
  }
  return RegisterExit(Kind::kExit, reinterpret_cast<void*>(fn), arg);
}

int atexit(void (*fn)()) noexcept {
  return relib::agent::exits::RegisterExit(Kind::kExit, reinterpret_cast<void*>(fn), nullptr);
}

int on_exit(void (*fn)(int, void*), void* arg) noexcept {
  return relib::agent::exits::RegisterExit(Kind::kOnExit, reinterpret_cast<void*>(fn), arg);
}

int __cxa_at_quick_exit(void (*fn)(void*), void* dso) noexcept {
  using namespace relib::agent::exits;
  static CxaAtQuickExit real = Real<CxaAtQuickExit>("__cxa_at_quick_exit");
  relib::agent::ModuleId owner = dso == nullptr ? Owner(reinterpret_cast<const void*>(fn)) : kHost;
  relib::agent::HostScope host;  // glibc's list blocks are process state
  if (owner == kHost) return real(fn, dso);
  int rc = real(fn, Token(owner));
  if (rc == 0) Record(owner, Kind::kQuickExit, reinterpret_cast<const void*>(fn));
  return rc;
}

int __register_atfork(void (*prepare)(), void (*parent)(), void (*child)(), void* dso) noexcept {
  using namespace relib::agent::exits;
  static RegisterAtfork real = Real<RegisterAtfork>("__register_atfork");
  relib::agent::ModuleId owner = kHost;
  if (dso == nullptr) {
    for (auto fn : {prepare, parent, child}) {
      if (owner == kHost && fn != nullptr) owner = Owner(reinterpret_cast<const void*>(fn));
    }
  }
  relib::agent::HostScope host;  // glibc's handler list is process state
  if (owner == kHost) return real(prepare, parent, child, dso);
  int rc = real(prepare, parent, child, Token(owner));
  if (rc == 0) {
    auto first = prepare ? prepare : parent ? parent : child;
    Record(owner, Kind::kFork, reinterpret_cast<const void*>(first));
  }
  return rc;
}

int pthread_atfork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept {
  return __register_atfork(prepare, parent, child, nullptr);
}

}  // extern "C"
