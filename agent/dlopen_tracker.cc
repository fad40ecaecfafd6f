#include "agent/dlopen_tracker.h"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <mutex>

#include "agent/fork_lock.h"

namespace relib::agent::libraries {
namespace {

struct Held {
  ModuleId module;
  void* handle;
  int references;
};

std::mutex held_mutex;
[[maybe_unused]] const bool held_mutex_held_across_fork = HoldAcrossFork<held_mutex>();
std::vector<Held>* held = nullptr;  // created on first use, never destroyed

std::vector<Held>& All() {
  if (held == nullptr) held = new std::vector<Held>();
  return *held;
}

template <typename T>
T Real(const char* name) {
  HostScope host;
  return reinterpret_cast<T>(::dlsym(RTLD_NEXT, name));
}
using Dlopen = void* (*)(const char*, int);
using Dlmopen = void* (*)(Lmid_t, const char*, int);
using Dlclose = int (*)(void*);
Dlopen RealDlopen() {
  static Dlopen real = Real<Dlopen>("dlopen");
  return real;
}
Dlclose RealDlclose() {
  static Dlclose real = Real<Dlclose>("dlclose");
  return real;
}

void* Track(ModuleId module, void* handle) {
  if (handle == nullptr || module == kHost) return handle;
  HostScope host;
  std::lock_guard<std::mutex> lock(held_mutex);
  for (Held& h : All()) {
    if (h.module == module && h.handle == handle) {
      ++h.references;
      return handle;
    }
  }
  All().push_back({module, handle, 1});
  return handle;
}

// The module whose dlclose (and so static destructors) runs on this thread:
// their dlclose calls run in host scope but are the module's.
thread_local ModuleId closing = kHost;

// Takes one reference of `module` off `handle`.
void Untrack(ModuleId module, void* handle) {
  if (module == kHost) return;
  HostScope host;
  std::lock_guard<std::mutex> lock(held_mutex);
  auto& all = All();
  for (auto it = all.begin(); it != all.end(); ++it) {
    if (it->module != module || it->handle != handle) continue;
    if (--it->references == 0) all.erase(it);
    return;
  }
}

std::vector<Held> Take(ModuleId id) {
  HostScope host;
  std::lock_guard<std::mutex> lock(held_mutex);
  std::vector<Held> taken;
  std::erase_if(All(), [&](const Held& h) {
    if (h.module != id) return false;
    taken.push_back(h);
    return true;
  });
  return taken;
}

}  // namespace

void* OpenAsHost(const char* path, int flags) { return RealDlopen()(path, flags); }

int CloseAsHost(void* handle) { return RealDlclose()(handle); }

std::vector<OpenLibrary> Open(ModuleId id) {
  HostScope host;
  std::vector<OpenLibrary> open;
  std::lock_guard<std::mutex> lock(held_mutex);
  for (const Held& h : All()) {
    if (h.module != id) continue;
    link_map* map = nullptr;
    std::string path = "?";
    if (::dlinfo(h.handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr) {
      path = map->l_name[0] ? map->l_name : "(main program)";
    }
    open.push_back({path, h.references});
  }
  return open;
}

std::vector<Holder> HoldersOf(const std::string& path) {
  HostScope host;
  std::vector<Holder> holders;
  std::lock_guard<std::mutex> lock(held_mutex);
  for (const Held& h : All()) {
    link_map* map = nullptr;
    if (::dlinfo(h.handle, RTLD_DI_LINKMAP, &map) != 0 || map == nullptr || map->l_name == nullptr) continue;
    if (path == map->l_name) holders.push_back({h.module, h.references});
  }
  return holders;
}

ClosingScope::ClosingScope(ModuleId id) : previous_(closing) { closing = id; }
ClosingScope::~ClosingScope() { closing = previous_; }

int CloseAll(ModuleId id) {
  ClosingScope scope(id);
  HostScope host;
  int closed = 0;
  // One reference at a time, newest first, each taken off its record before
  // the dlclose: a library's destructor that dlcloses what its constructor
  // opened (recorded as the module's too) then finds its own record.
  for (;;) {
    void* handle = nullptr;
    {
      std::lock_guard<std::mutex> lock(held_mutex);
      auto& all = All();
      auto newest = std::find_if(all.rbegin(), all.rend(), [id](const Held& h) { return h.module == id; });
      if (newest == all.rend()) break;
      handle = newest->handle;
      if (--newest->references == 0) all.erase(std::next(newest).base());
    }
    if (RealDlclose()(handle) == 0) ++closed;
  }
  return closed;
}

void Forget(ModuleId id) { Take(id); }

}  // namespace relib::agent::libraries

extern "C" {

// The real calls run in host scope: what the dynamic loader and the opened
// library's constructors allocate (dlerror's buffer, the library's statics)
// lives as long as the library, not as long as the module.
void* dlopen(const char* path, int flags) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::libraries;
  ModuleId module = CurrentModule();
  void* handle;
  {
    HostScope host;
    handle = RealDlopen()(path, flags);
  }
  return Track(module, handle);
}

void* dlmopen(Lmid_t namespace_id, const char* path, int flags) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::libraries;
  static Dlmopen real = Real<Dlmopen>("dlmopen");
  ModuleId module = CurrentModule();
  void* handle;
  {
    HostScope host;
    handle = real(namespace_id, path, flags);
  }
  return Track(module, handle);
}

int dlclose(void* handle) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::libraries;
  ModuleId module = CurrentModule();
  if (module == kHost) module = closing;
  int rc;
  {
    HostScope host;
    rc = RealDlclose()(handle);
  }
  if (rc == 0) Untrack(module, handle);
  return rc;
}

}  // extern "C"
