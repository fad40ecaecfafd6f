// In-process loops outside the heap: reading /proc/self/maps (parsed, and
// the bare read as its floor) and the copy + dlopen + dlsym + dlclose
// baseline of the reload figures.
#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/proc_maps.h"
#include "relib/module.h"

namespace {

void BM_ReadMappingsParsed(benchmark::State& state) {
  size_t lines = 0;
  for (auto _ : state) {
    auto mappings = relib::common::ReadMappings(0);
    if (!mappings.ok()) {
      state.SkipWithError("ReadMappings failed");
      return;
    }
    lines = mappings->size();
    benchmark::DoNotOptimize(mappings);
  }
  state.counters["lines"] = static_cast<double>(lines);
}
BENCHMARK(BM_ReadMappingsParsed);

// The floor: open + read the whole file + close, nothing parsed.
void BM_ReadMappingsRaw(benchmark::State& state) {
  static char buffer[1 << 20];
  for (auto _ : state) {
    int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    size_t total = 0;
    for (ssize_t n; (n = ::read(fd, buffer + total, sizeof(buffer) - total)) > 0;) total += static_cast<size_t>(n);
    ::close(fd);
    benchmark::DoNotOptimize(total);
  }
}
BENCHMARK(BM_ReadMappingsRaw);

// copy + dlopen + dlsym + dlclose of the module named by $RELIB_BENCH_MODULE.
void BM_CopyDlopenDlclose(benchmark::State& state) {
  const char* module = std::getenv("RELIB_BENCH_MODULE");
  if (module == nullptr) {
    state.SkipWithError("RELIB_BENCH_MODULE is not set");
    return;
  }
  std::string copy = std::filesystem::temp_directory_path() / ("relib-bench-" + std::to_string(::getpid()) + ".so");
  for (auto _ : state) {
    std::filesystem::copy_file(module, copy, std::filesystem::copy_options::overwrite_existing);
    void* handle = ::dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      state.SkipWithError(::dlerror());
      break;
    }
    benchmark::DoNotOptimize(::dlsym(handle, RELIB_DESCRIPTOR_SYMBOL_NAME));
    ::dlclose(handle);
    std::filesystem::remove(copy);
  }
  std::filesystem::remove(copy);
}
BENCHMARK(BM_CopyDlopenDlclose)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
