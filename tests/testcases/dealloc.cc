// Frees of memory the module does not own (the call's input, a pointer never
// allocated, an interior pointer, a block freed twice), and a workload of
// legitimate frees that must never be mistaken for one. Mirrors relib's
// testing/module/src/dealloc_validation.rs (there: the module's main frees
// the address 0x1 through the global allocator).
#include <malloc.h>
#include <sys/mman.h>
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

// A pointer into static data whose preceding word looks like a chunk size
// (0x100001: 1 MiB, prev-in-use) puts the would-be trailer 1 MiB away. That
// page is made PROT_NONE here (or, if something is mapped there, the first
// free page farther on, the size adjusted to reach it), so reading the
// trailer faults, deterministically. The thread first allocates and frees a
// block of its own, so the free takes the tracker's inline path first.
alignas(16) uint64_t far_header_array[8];
std::string FreeFarHeader(std::string_view) {
  std::free(Launder(std::malloc(64)));
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  auto user = reinterpret_cast<uintptr_t>(&far_header_array[2]);
  uint64_t size = 0x100000;
  void* guard = MAP_FAILED;
  for (int attempt = 0; attempt < 64 && guard == MAP_FAILED; ++attempt, size += 0x100000) {
    uintptr_t trailer = user + size - 16;  // glibc's usable size less the 8-byte trailer
    guard = ::mmap(reinterpret_cast<void*>(trailer / page * page), page, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (guard != MAP_FAILED && reinterpret_cast<uintptr_t>(guard) != trailer / page * page) {
      ::munmap(guard, page);  // an old kernel took the hint as a hint
      guard = MAP_FAILED;
    }
  }
  if (guard == MAP_FAILED) return "no free page for the guard";
  size -= 0x100000;
  far_header_array[1] = size | 1;
  std::free(Launder(&far_header_array[2]));
  ::munmap(guard, page);
  return "freed static data with header 0x" + [&] {
    char hex[32];
    std::snprintf(hex, sizeof(hex), "%llx", static_cast<unsigned long long>(size | 1));
    return std::string(hex);
  }();
}

// A pointer at the start of a page whose previous page is not mapped: the
// word before it (glibc's chunk header) cannot be read, so the free faults
// while it is validated. The thread first allocates and frees a block of its
// own, so the free takes the tracker's inline path (no crash note set before
// its loads: the crash handler finds the faulting load by address).
std::string FreeUnmappedHeader(std::string_view) {
  std::free(Launder(std::malloc(64)));
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  auto* pages = static_cast<char*>(::mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (pages == MAP_FAILED) return "mmap failed";
  ::munmap(pages, page);
  std::free(Launder(pages + page));
  return "freed a pointer after an unmapped page";
}

// A pointer 0x20 bytes before a PROT_NONE page whose preceding word is the
// header given as input (e.g. 0x1008: size bit 3 set; 0x1006: mmapped and of
// a non-main arena, which glibc never sets together): no glibc chunk has such
// a header, and the trailer it would point at (~4 KiB on) lies in the
// PROT_NONE page. The free must be refused as "not a heap block" without
// reading that trailer. The thread first allocates and frees a block of its
// own, so the free takes the tracker's inline path.
std::string FreeBadFlagsHeader(std::string_view input) {
  std::free(Launder(std::malloc(64)));
  uint64_t header = std::strtoull(std::string(input).c_str(), nullptr, 0);
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  auto* pages = static_cast<char*>(::mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (pages == MAP_FAILED) return "mmap failed";
  ::mprotect(pages + page, page, PROT_NONE);
  char* user = pages + page - 0x20;
  std::memcpy(user - 8, &header, sizeof(header));
  std::free(Launder(user));
  ::munmap(pages, 2 * page);
  return "freed a pointer with header " + std::string(input);
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
             relib::Export<DoubleFree>("double_free"), relib::Export<Churn>("churn"), relib::Export<Ping>("ping"),
             relib::Export<FreeFarHeader>("free_far_header"),
             relib::Export<FreeUnmappedHeader>("free_unmapped_header"),
             relib::Export<FreeBadFlagsHeader>("free_bad_flags_header"));
