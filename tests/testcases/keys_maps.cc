// A pthread key, a C11 thread-specific key and an anonymous mapping the
// module never releases.
#include <pthread.h>
#include <sys/mman.h>
#include <threads.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {

void KeyDestructor(void*) {}

std::string CreateKey(std::string_view) {
  pthread_key_t key;
  if (pthread_key_create(&key, &KeyDestructor) != 0) throw relib::Error("pthread_key_create failed");
  return std::to_string(key);
}

// glibc's tss_create creates a pthread key without going through
// pthread_key_create.
std::string CreateC11Key(std::string_view) {
  tss_t key;
  if (tss_create(&key, &KeyDestructor) != thrd_success) throw relib::Error("tss_create failed");
  return std::to_string(key);
}

std::string MapAnonymous(std::string_view input) {
  size_t length = input.empty() ? 1 << 20 : std::stoul(std::string(input));
  void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw relib::Error("mmap failed");
  std::memset(p, 7, length);
  char text[32];
  std::snprintf(text, sizeof(text), "%lx", reinterpret_cast<unsigned long>(p));
  return text;
}

}  // namespace

RELIB_MODULE("keys-maps", nullptr, nullptr, relib::Export<CreateKey>("create_key"),
             relib::Export<CreateC11Key>("create_c11_key"),
             relib::Export<MapAnonymous>("map_anonymous"));
