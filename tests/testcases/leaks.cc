// Heap a module leaves behind: malloc, new[], std::string/std::vector made in
// a module thread, and big or many small blocks for RSS checks.
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "relib/module.hpp"

namespace {

// Keeps the compiler from eliding allocations whose result is never read.
void* volatile sink;

size_t Size(std::string_view input) { return input.empty() ? 1000 : std::stoul(std::string(input)); }

std::string LeakMalloc(std::string_view input) {
  void* p = std::malloc(Size(input));
  std::memset(p, 1, Size(input));
  sink = p;
  return "leaked";
}

std::string LeakNewArray(std::string_view input) {
  char* p = new char[Size(input)];
  std::memset(p, 2, Size(input));
  sink = p;
  return "leaked";
}

std::vector<std::string>* kept = nullptr;
std::string LeakInThread(std::string_view) {
  std::thread([] {
    kept = new std::vector<std::string>();
    for (int i = 0; i < 10; ++i) kept->push_back(std::string(100, 'x'));
  }).join();
  return "leaked";
}

std::string AllocAndFree(std::string_view input) {
  std::vector<char> buffer(Size(input));
  std::string s(Size(input), 'y');
  return std::to_string(buffer.size() + s.size());
}

// Leaks `input` MiB in 1 MiB blocks, every page touched.
std::string LeakMegabytes(std::string_view input) {
  size_t mib = Size(input);
  for (size_t i = 0; i < mib; ++i) {
    void* p = std::malloc(1 << 20);
    std::memset(p, 3, 1 << 20);
    sink = p;
  }
  return "leaked";
}

// Leaks `input` MiB in 64-byte blocks (small enough for malloc's fastbins,
// which free() never coalesces or trims), half on the calling thread and half
// on a module thread (another malloc arena), every byte touched.
void LeakSmall(size_t bytes) {
  for (size_t done = 0; done < bytes; done += 64) {
    void* p = std::malloc(64);
    std::memset(p, 4, 64);
    sink = p;
  }
}
std::string LeakSmallBlocks(std::string_view input) {
  size_t half = Size(input) << 19;
  std::thread([half] { LeakSmall(half); }).join();
  LeakSmall(half);
  return "leaked";
}

}  // namespace

RELIB_MODULE("leaks", nullptr, nullptr, relib::Export<LeakMalloc>("leak_malloc"),
             relib::Export<LeakNewArray>("leak_new_array"), relib::Export<LeakInThread>("leak_in_thread"),
             relib::Export<AllocAndFree>("alloc_and_free"), relib::Export<LeakMegabytes>("leak_megabytes"),
             relib::Export<LeakSmallBlocks>("leak_small_blocks"));
