// Frees of memory the module does not own (the call's input, a pointer never
// allocated, an interior pointer, a block freed twice), and a workload of
// legitimate frees that must never be mistaken for one. Mirrors relib's
// testing/module/src/dealloc_validation.rs (there: the module's main frees
// the address 0x1 through the global allocator).
#include <malloc.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "relib/module.hpp"

namespace {

// Hides a pointer's origin from the optimizer (and from -Wfree-nonheap-object
// and -Wuse-after-free, which would flag the deliberate mistakes below).
void* Launder(const void* p) {
  void* q = const_cast<void*>(p);
  asm volatile("" : "+r"(q));
  return q;
}

// The host owns `in` (relib/module.h): freeing it is the module's bug.
std::string FreeInput(std::string_view input) {
  std::free(Launder(input.data()));
  return "freed the input";
}
std::string ReallocInput(std::string_view input) {
  void* moved = std::realloc(Launder(input.data()), 4096);
  return moved ? "moved the input" : "realloc refused";
}
std::string DeleteInput(std::string_view input) {
  ::operator delete(Launder(input.data()));
  return "deleted the input";
}
// relib's scenario: an address the allocator never handed out.
std::string FreeBogus(std::string_view) {
  std::free(Launder(reinterpret_cast<void*>(uintptr_t{1})));
  return "freed 0x1";
}
std::string FreeInterior(std::string_view) {
  auto* block = static_cast<char*>(std::malloc(256));
  std::memset(block, 0x5a, 256);
  std::free(Launder(block + 64));
  return "freed an interior pointer";
}
std::string DoubleFree(std::string_view) {
  void* block = std::malloc(64);
  std::free(block);
  std::free(Launder(block));
  return "freed twice";
}

// Everything here frees only what the module (or libc/libstdc++ on its
// behalf) allocated: must never be reported.
std::string Churn(std::string_view input) {
  std::string text(input);
  for (int i = 0; i < 200; ++i) text += std::to_string(i);
  std::vector<std::unique_ptr<int[]>> arrays;
  for (int i = 0; i < 100; ++i) arrays.emplace_back(new int[i + 1]);
  void* grown = nullptr;
  for (size_t n = 16; n < (1 << 20); n *= 3) grown = std::realloc(grown, n);
  std::free(grown);
  void* aligned = nullptr;
  if (posix_memalign(&aligned, 4096, 100) != 0) throw relib::Error("posix_memalign failed");
  std::free(aligned);
  std::free(std::aligned_alloc(64, 640));
  std::free(memalign(256, 10));
  struct alignas(128) Wide {
    char bytes[300];
  };
  delete new Wide;
  std::free(strdup("copied by libc"));
  std::ostringstream stream;
  stream << text.size() << ' ' << 3.25;
  char* line = nullptr;
  size_t cap = 0;
  FILE* memory = fmemopen(const_cast<char*>("a line\n"), 7, "r");
  if (memory) {
    getline(&line, &cap, memory);
    fclose(memory);
  }
  std::free(line);
  std::string from_thread;
  std::thread([&] { from_thread = std::string(100, 'x'); }).join();
  return "ok " + stream.str();
}

std::string Ping(std::string_view) { return "pong"; }

}  // namespace

RELIB_MODULE("dealloc", nullptr, nullptr, relib::Export<FreeInput>("free_input"),
             relib::Export<ReallocInput>("realloc_input"), relib::Export<DeleteInput>("delete_input"),
             relib::Export<FreeBogus>("free_bogus"), relib::Export<FreeInterior>("free_interior"),
             relib::Export<DoubleFree>("double_free"), relib::Export<Churn>("churn"), relib::Export<Ping>("ping"));
