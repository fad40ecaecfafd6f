#include "agent/dlopen_tracker.h"

#include <dlfcn.h>
#include <link.h>

#include <mutex>

namespace relib::agent::libraries {
namespace {

struct Held {
  ModuleId module;
  void* handle;
  int references;
};

std::mutex held_mutex;
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

void* Track(void* handle) {
  ModuleId module = CurrentModule();
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

// Takes one reference of the calling module off `handle`.
void Untrack(void* handle) {
  ModuleId module = CurrentModule();
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

int CloseAll(ModuleId id) {
  int closed = 0;
  for (const Held& h : Take(id)) {
    ModuleScope scope(id);
    for (int i = 0; i < h.references; ++i) {
      if (RealDlclose()(h.handle) == 0) ++closed;
    }
  }
  return closed;
}

void Forget(ModuleId id) { Take(id); }

}  // namespace relib::agent::libraries

extern "C" {

void* dlopen(const char* path, int flags) noexcept {
  using namespace relib::agent::libraries;
  return Track(RealDlopen()(path, flags));
}

void* dlmopen(Lmid_t namespace_id, const char* path, int flags) noexcept {
  using namespace relib::agent::libraries;
  static Dlmopen real = Real<Dlmopen>("dlmopen");
  return Track(real(namespace_id, path, flags));
}

int dlclose(void* handle) noexcept {
  using namespace relib::agent::libraries;
  int rc = RealDlclose()(handle);
  if (rc == 0) Untrack(handle);
  return rc;
}

}  // extern "C"
