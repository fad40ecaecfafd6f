// A pthread key, a C11 thread-specific key and an anonymous mapping the
// module never releases; a mapping of its own file made with the raw system
// call (no interposer sees it) and an fd of its own file.
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <threads.h>
#include <unistd.h>

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

// The file this module was loaded from (the worker's copy).
std::string OwnFile() {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(&OwnFile), &info) == 0 || info.dli_fname == nullptr) {
    throw relib::Error("dladdr failed");
  }
  return info.dli_fname;
}

// One page of the module's own file, mapped behind every interposer's back;
// the fd is closed, so only the mapping holds the file.
std::string MapOwnFileRaw(std::string_view) {
  int fd = ::open(OwnFile().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw relib::Error("open of the module's own file failed");
  long p = ::syscall(SYS_mmap, nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == -1) throw relib::Error("mmap failed");
  return "mapped";
}

// An fd of the module's own file, never closed (nothing mapped).
std::string OpenOwnFile(std::string_view) {
  int fd = ::open(OwnFile().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw relib::Error("open of the module's own file failed");
  return std::to_string(fd);
}

}  // namespace

RELIB_MODULE("keys-maps", nullptr, nullptr, relib::Export<CreateKey>("create_key"),
             relib::Export<CreateC11Key>("create_c11_key"),
             relib::Export<MapAnonymous>("map_anonymous"), relib::Export<MapOwnFileRaw>("map_own_file_raw"),
             relib::Export<OpenOwnFile>("open_own_file"));
