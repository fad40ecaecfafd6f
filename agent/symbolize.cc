#include "agent/symbolize.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/module_context.h"

namespace relib::agent {
namespace {

bool ReadAt(int fd, void* to, size_t size, uint64_t offset) {
  auto* bytes = static_cast<char*>(to);
  while (size > 0) {
    ssize_t n = ::pread(fd, bytes, size, static_cast<off_t>(offset));
    if (n <= 0) return false;
    bytes += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

// Largest .symtab read (a module's own table is a few KiB to a few MiB).
constexpr uint64_t kMaxSymtabBytes = 64u << 20;

// The function or object in `path`'s .symtab that contains `vaddr` (a link-
// time address), as {mangled name, offset}. Stripped files have none.
std::optional<std::pair<std::string, uintptr_t>> FromSymtab(const char* path, uintptr_t vaddr) {
  HostScope host;  // the agent's reading, never a module's fd or memory
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  Elf64_Ehdr header;
  if (!ReadAt(fd, &header, sizeof(header), 0) || std::string_view(reinterpret_cast<char*>(header.e_ident), 4) != ELFMAG ||
      header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_shentsize != sizeof(Elf64_Shdr) || header.e_shnum == 0 ||
      header.e_shnum > 4096) {
    return std::nullopt;
  }
  std::vector<Elf64_Shdr> sections(header.e_shnum);
  if (!ReadAt(fd, sections.data(), sections.size() * sizeof(Elf64_Shdr), header.e_shoff)) return std::nullopt;
  for (const Elf64_Shdr& table : sections) {
    if (table.sh_type != SHT_SYMTAB || table.sh_link >= sections.size() || table.sh_entsize != sizeof(Elf64_Sym) ||
        table.sh_size > kMaxSymtabBytes) {
      continue;
    }
    const Elf64_Shdr& strings = sections[table.sh_link];
    if (strings.sh_size > kMaxSymtabBytes) continue;
    std::vector<Elf64_Sym> symbols(table.sh_size / sizeof(Elf64_Sym));
    if (!ReadAt(fd, symbols.data(), symbols.size() * sizeof(Elf64_Sym), table.sh_offset)) continue;
    const Elf64_Sym* best = nullptr;
    for (const Elf64_Sym& symbol : symbols) {
      int type = ELF64_ST_TYPE(symbol.st_info);
      if ((type != STT_FUNC && type != STT_OBJECT) || symbol.st_shndx == SHN_UNDEF || symbol.st_value > vaddr) continue;
      bool inside = vaddr < symbol.st_value + symbol.st_size || (symbol.st_size == 0 && symbol.st_value == vaddr);
      if (inside && (best == nullptr || symbol.st_value > best->st_value)) best = &symbol;
    }
    if (best == nullptr || best->st_name >= strings.sh_size) return std::nullopt;
    std::string name(std::min<uint64_t>(strings.sh_size - best->st_name, 4096), '\0');
    if (!ReadAt(fd, name.data(), name.size(), strings.sh_offset + best->st_name)) return std::nullopt;
    name.resize(name.find('\0') == std::string::npos ? name.size() : name.find('\0'));
    return std::make_pair(name, vaddr - best->st_value);
  }
  return std::nullopt;
}

}  // namespace

std::string Demangle(const char* mangled) {
  if (mangled == nullptr) return "";
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : mangled;
  std::free(demangled);
  return name;
}

std::optional<Symbol> LookupSymbol(const void* address) {
  auto at = reinterpret_cast<uintptr_t>(address);
  Dl_info info;
  link_map* map = nullptr;
  if (::dladdr1(address, &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) == 0) return std::nullopt;
  Symbol symbol;
  symbol.object = info.dli_fname ? std::filesystem::path(info.dli_fname).filename().string() : "?";
  symbol.object_offset = at - reinterpret_cast<uintptr_t>(info.dli_fbase);
  if (info.dli_sname != nullptr) {
    symbol.name = Demangle(info.dli_sname);
    symbol.symbol_offset = at - reinterpret_cast<uintptr_t>(info.dli_saddr);
    return symbol;
  }
  // Hidden symbols are not in the dynamic table; the file's .symtab has them
  // (unless stripped). The main program's name is "" in the link map.
  const char* path = info.dli_fname;
  if (map != nullptr && path != nullptr && path[0] == '/') {
    if (auto found = FromSymtab(path, at - map->l_addr)) {
      symbol.name = Demangle(found->first.c_str());
      symbol.symbol_offset = found->second;
    }
  }
  return symbol;
}

std::string Symbolize(const void* address) {
  std::optional<Symbol> symbol = LookupSymbol(address);
  if (!symbol) return absl::StrCat("0x", absl::Hex(reinterpret_cast<uintptr_t>(address)));
  if (symbol->name.empty()) return absl::StrCat(symbol->object, "+0x", absl::Hex(symbol->object_offset));
  return absl::StrCat(symbol->name, "+0x", absl::Hex(symbol->symbol_offset), " (", symbol->object, ")");
}

}  // namespace relib::agent
