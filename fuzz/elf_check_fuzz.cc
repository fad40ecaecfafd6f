// Fuzz target: the pre-dlopen validation of a module file (agent/elf_file):
// CheckSharedObject, CheckModuleImage (segments, dynamic section, descriptor
// symbol in the dynamic symbol table) and InspectPinning, on the input as a
// file. Nothing is ever dlopen'ed.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "agent/elf_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int fd = ::memfd_create("relib-elf-fuzz", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (!relib::agent::CheckSharedObject(path).ok()) return 0;
  if (!relib::agent::CheckModuleImage(path, "fuzzed.so").ok()) return 0;
  (void)relib::agent::InspectPinning(path);
  return 0;
}
