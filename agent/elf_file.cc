#include "agent/elf_file.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"

namespace relib::agent {

absl::Status CheckSharedObject(const std::string& path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("module file ", path, " does not exist"));
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open module file ", path));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return absl::ErrnoToStatus(errno, "fstat " + path);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  Elf64_Ehdr header;
  ssize_t n = ::pread(fd.get(), &header, sizeof(header), 0);
  if (n < 0) return absl::ErrnoToStatus(errno, "read " + path);
  if (static_cast<size_t>(n) < SELFMAG || std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an ELF file (no ELF magic)"));
  }
  if (static_cast<size_t>(n) < sizeof(header) || header.e_ident[EI_CLASS] != ELFCLASS64) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a 64-bit ELF file"));
  }
  if (header.e_type != ET_DYN) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is an ELF file but not a shared object (e_type ",
                                                   header.e_type, ")"));
  }
#if defined(__x86_64__)
  if (header.e_machine != EM_X86_64) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an x86-64 shared object"));
  }
#elif defined(__aarch64__)
  if (header.e_machine != EM_AARCH64) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an AArch64 shared object"));
  }
#endif
  return absl::OkStatus();
}

absl::StatusOr<PinningFacts> InspectPinning(const std::string& path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "open " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return absl::ErrnoToStatus(errno, "fstat " + path);
  size_t size = static_cast<size_t>(st.st_size);
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (mapped == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap " + path);
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { ::munmap(p, n); }
  } unmap{mapped, size};
  const auto* base = static_cast<const unsigned char*>(mapped);
  auto in_file = [&](uint64_t offset, uint64_t length) { return offset <= size && length <= size - offset; };
  auto malformed = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed ELF (", what, ")"));
  };
  const auto& header = *reinterpret_cast<const Elf64_Ehdr*>(base);
  if (header.e_shentsize != sizeof(Elf64_Shdr) || !in_file(header.e_shoff, uint64_t{header.e_shnum} * sizeof(Elf64_Shdr))) {
    return malformed("section headers");
  }
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(base + header.e_shoff);
  PinningFacts facts;
  for (unsigned i = 0; i < header.e_shnum; ++i) {
    const Elf64_Shdr& section = sections[i];
    if (section.sh_type == SHT_DYNSYM) {
      if (section.sh_entsize != sizeof(Elf64_Sym) || !in_file(section.sh_offset, section.sh_size) ||
          section.sh_link >= header.e_shnum) {
        return malformed("dynamic symbol table");
      }
      const Elf64_Shdr& strings = sections[section.sh_link];
      if (!in_file(strings.sh_offset, strings.sh_size)) return malformed("dynamic string table");
      const auto* symbols = reinterpret_cast<const Elf64_Sym*>(base + section.sh_offset);
      size_t count = section.sh_size / sizeof(Elf64_Sym);
      for (size_t s = 0; s < count; ++s) {
        if (ELF64_ST_BIND(symbols[s].st_info) != STB_GNU_UNIQUE || symbols[s].st_shndx == SHN_UNDEF) continue;
        if (symbols[s].st_name >= strings.sh_size) return malformed("symbol name");
        const char* name = reinterpret_cast<const char*>(base + strings.sh_offset + symbols[s].st_name);
        facts.unique_symbols.emplace_back(name, strnlen(name, strings.sh_size - symbols[s].st_name));
      }
    } else if (section.sh_type == SHT_DYNAMIC) {
      if (!in_file(section.sh_offset, section.sh_size)) return malformed("dynamic section");
      const auto* entries = reinterpret_cast<const Elf64_Dyn*>(base + section.sh_offset);
      for (size_t e = 0; e < section.sh_size / sizeof(Elf64_Dyn) && entries[e].d_tag != DT_NULL; ++e) {
        if (entries[e].d_tag == DT_FLAGS_1 && (entries[e].d_un.d_val & DF_1_NODELETE)) facts.nodelete = true;
      }
    }
  }
  return facts;
}

}  // namespace relib::agent
