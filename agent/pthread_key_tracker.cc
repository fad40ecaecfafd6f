#include "agent/pthread_key_tracker.h"

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>

namespace relib::agent::keys {
namespace {

// PTHREAD_KEYS_MAX is 1024 on glibc; keys are small integers.
constexpr unsigned kMaxKeys = 1024;
std::atomic<ModuleId> owner[kMaxKeys];

using KeyDelete = int (*)(pthread_key_t);
KeyDelete RealDelete() {
  static KeyDelete real = [] {
    HostScope host;
    return reinterpret_cast<KeyDelete>(::dlsym(RTLD_NEXT, "pthread_key_delete"));
  }();
  return real;
}

}  // namespace

int DeleteAll(ModuleId id) {
  int deleted = 0;
  for (unsigned key = 0; key < kMaxKeys; ++key) {
    if (owner[key].load() != id) continue;
    owner[key] = kHost;
    if (RealDelete()(key) == 0) ++deleted;
  }
  return deleted;
}

}  // namespace relib::agent::keys

extern "C" int pthread_key_create(pthread_key_t* key, void (*destructor)(void*)) noexcept {
  using namespace relib::agent;
  static auto real = [] {
    HostScope host;
    return reinterpret_cast<int (*)(pthread_key_t*, void (*)(void*))>(::dlsym(RTLD_NEXT, "pthread_key_create"));
  }();
  int rc = real(key, destructor);
  if (rc == 0 && *key < keys::kMaxKeys) keys::owner[*key] = CurrentModule();
  return rc;
}

extern "C" int pthread_key_delete(pthread_key_t key) noexcept {
  using namespace relib::agent;
  if (key < keys::kMaxKeys) keys::owner[key] = kHost;
  return keys::RealDelete()(key);
}

// C11 thread-specific storage: glibc creates these keys without calling
// pthread_key_create, so they are routed through the interposers above.
extern "C" int tss_create(unsigned int* key, void (*destructor)(void*)) noexcept {
  return pthread_key_create(key, destructor) == 0 ? 0 /* thrd_success */ : 2 /* thrd_error */;
}

extern "C" void tss_delete(unsigned int key) noexcept { pthread_key_delete(key); }
