#include "agent/mmap_tracker.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <mutex>

namespace relib::agent::maps {
namespace {

struct Owned {
  ModuleId module;
  uintptr_t start;
  uintptr_t end;
  std::string path;
};

std::mutex regions_mutex;
std::vector<Owned>* regions = nullptr;  // created on first use, never destroyed

std::vector<Owned>& Regions() {
  if (regions == nullptr) regions = new std::vector<Owned>();
  return *regions;
}

using Mmap = void* (*)(void*, size_t, int, int, int, off_t);
using Munmap = int (*)(void*, size_t);

Mmap RealMmap() {
  static Mmap real = [] {
    HostScope host;
    return reinterpret_cast<Mmap>(::dlsym(RTLD_NEXT, "mmap"));
  }();
  return real;
}

Munmap RealMunmap() {
  static Munmap real = [] {
    HostScope host;
    return reinterpret_cast<Munmap>(::dlsym(RTLD_NEXT, "munmap"));
  }();
  return real;
}

// Removes [start, end) from every record, splitting records as needed.
// Called for every munmap in the process: cheap when nothing overlaps.
void Remove(uintptr_t start, uintptr_t end) {
  HostScope host;
  std::lock_guard<std::mutex> lock(regions_mutex);
  auto& all = Regions();
  auto overlaps = [&](const Owned& r) { return r.start < end && start < r.end; };
  if (std::none_of(all.begin(), all.end(), overlaps)) return;
  std::vector<Owned> kept;
  kept.reserve(all.size() + 1);
  for (Owned& r : all) {
    if (!overlaps(r)) {
      kept.push_back(std::move(r));
      continue;
    }
    if (r.start < start) kept.push_back({r.module, r.start, start, r.path});
    if (r.end > end) kept.push_back({r.module, end, r.end, r.path});
  }
  all.swap(kept);
}

// The file behind `fd` as /proc names it ("" if it cannot be read).
std::string FileOf(int fd) {
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[PATH_MAX];
  ssize_t length = ::readlink(link, target, sizeof(target));
  return length > 0 ? std::string(target, static_cast<size_t>(length)) : std::string();
}

void* Track(void* address, size_t length, int flags, int fd) {
  ModuleId module = CurrentModule();
  if (address == MAP_FAILED || module == kHost) return address;
  auto start = reinterpret_cast<uintptr_t>(address);
  Remove(start, start + length);  // MAP_FIXED over an old region
  HostScope host;
  std::string path;
  if (!(flags & MAP_ANONYMOUS)) {
    path = FileOf(fd);
    if (path.empty()) path = "(fd " + std::to_string(fd) + ")";
  }
  std::lock_guard<std::mutex> lock(regions_mutex);
  Regions().push_back({module, start, start + length, std::move(path)});
  return address;
}

std::vector<Owned> Take(ModuleId id, const std::function<bool(const Region&)>& which) {
  HostScope host;
  std::lock_guard<std::mutex> lock(regions_mutex);
  std::vector<Owned> taken;
  std::erase_if(Regions(), [&](Owned& r) {
    if (r.module != id || (which && !which(Region{r.start, r.end - r.start, r.path}))) return false;
    taken.push_back(std::move(r));
    return true;
  });
  return taken;
}

}  // namespace

std::vector<Region> Live(ModuleId id) {
  HostScope host;
  std::lock_guard<std::mutex> lock(regions_mutex);
  std::vector<Region> live;
  for (const Owned& r : Regions()) {
    if (r.module == id) live.push_back({r.start, r.end - r.start, r.path});
  }
  return live;
}

std::vector<HeldRegion> Overlapping(uintptr_t start, uintptr_t end) {
  HostScope host;
  std::lock_guard<std::mutex> lock(regions_mutex);
  std::vector<HeldRegion> held;
  for (const Owned& r : Regions()) {
    if (r.start < end && start < r.end) held.push_back({r.module, {r.start, r.end - r.start, r.path}});
  }
  return held;
}

size_t Unmap(ModuleId id, const std::function<bool(const Region&)>& which) {
  size_t bytes = 0;
  for (Owned& r : Take(id, which)) {
    if (RealMunmap()(reinterpret_cast<void*>(r.start), r.end - r.start) == 0) {
      bytes += r.end - r.start;
      continue;
    }
    // Still mapped and still the module's: it stays on record.
    HostScope host;
    std::lock_guard<std::mutex> lock(regions_mutex);
    Regions().push_back(std::move(r));
  }
  return bytes;
}

void Forget(ModuleId id) { Take(id, {}); }

}  // namespace relib::agent::maps

extern "C" void* mmap(void* address, size_t length, int prot, int flags, int fd, off_t offset) noexcept {
  using namespace relib::agent::maps;
  return Track(RealMmap()(address, length, prot, flags, fd, offset), length, flags, fd);
}

extern "C" void* mmap64(void* address, size_t length, int prot, int flags, int fd, off_t offset) noexcept {
  using namespace relib::agent::maps;
  return Track(RealMmap()(address, length, prot, flags, fd, offset), length, flags, fd);
}

extern "C" void* mremap(void* old_address, size_t old_size, size_t new_size, int flags, ...) noexcept {
  using namespace relib::agent;
  using namespace relib::agent::maps;
  static auto real = [] {
    HostScope host;
    return reinterpret_cast<void* (*)(void*, size_t, size_t, int, ...)>(::dlsym(RTLD_NEXT, "mremap"));
  }();
  void* new_address = nullptr;
  if (flags & MREMAP_FIXED) {
    va_list args;
    va_start(args, flags);
    new_address = va_arg(args, void*);
    va_end(args);
  }
  void* moved = real(old_address, old_size, new_size, flags, new_address);
  if (moved == MAP_FAILED) return moved;
  // The record follows the mapping, owned by whoever owned the old range.
  auto start = reinterpret_cast<uintptr_t>(old_address);
  ModuleId owner = kHost;
  std::string path;
  {
    HostScope host;
    std::lock_guard<std::mutex> lock(regions_mutex);
    for (const Owned& r : Regions()) {
      if (r.start <= start && start < r.end) {
        owner = r.module;
        path = r.path;
      }
    }
  }
  if (owner == kHost) return moved;
  Remove(start, start + old_size);
  auto to = reinterpret_cast<uintptr_t>(moved);
  Remove(to, to + new_size);
  HostScope host;
  std::lock_guard<std::mutex> lock(regions_mutex);
  Regions().push_back({owner, to, to + new_size, std::move(path)});
  return moved;
}

extern "C" int munmap(void* address, size_t length) noexcept {
  using namespace relib::agent::maps;
  int rc = RealMunmap()(address, length);
  if (rc == 0) {
    auto start = reinterpret_cast<uintptr_t>(address);
    Remove(start, start + length);
  }
  return rc;
}
