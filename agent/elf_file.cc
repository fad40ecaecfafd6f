#include "agent/elf_file.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"
#include "relib/module.h"

namespace relib::agent {

namespace {

// The ELF header checks both CheckSharedObject and CheckModuleImage make.
// `n` is how many bytes of `header` were read.
absl::Status CheckHeader(const Elf64_Ehdr& header, size_t n, const std::string& path) {
  if (n < SELFMAG || std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an ELF file (no ELF magic)"));
  }
  if (n < sizeof(header) || header.e_ident[EI_CLASS] != ELFCLASS64) {
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

bool IsPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

// Reads a module file with pread and bounds checks only: nothing of it is
// mapped, so a file that shrinks under us cannot fault this process. A small
// file is read whole, once (LoadAll): a check reads a dozen scattered pieces,
// and each pread is a system call.
class Image {
 public:
  Image(int fd, uint64_t size) : fd_(fd), size_(size) {}

  uint64_t size() const { return size_; }
  bool InFile(uint64_t offset, uint64_t length) const { return offset <= size_ && length <= size_ - offset; }

  // Reads the whole file into memory; later Reads are served from there.
  absl::Status LoadAll() {
    std::string bytes(static_cast<size_t>(size_), '\0');
    RELIB_RETURN_IF_ERROR(Read(0, bytes.data(), bytes.size()));
    bytes_ = std::move(bytes);
    loaded_ = true;
    return absl::OkStatus();
  }
  // The whole file after LoadAll, else null.
  const unsigned char* data() const {
    return loaded_ ? reinterpret_cast<const unsigned char*>(bytes_.data()) : nullptr;
  }

  // Reads `length` bytes at `offset`. REQUIRES: InFile(offset, length).
  absl::Status Read(uint64_t offset, void* out, size_t length) const {
    if (loaded_) {
      std::memcpy(out, bytes_.data() + offset, length);
      return absl::OkStatus();
    }
    auto* bytes = static_cast<char*>(out);
    size_t done = 0;
    while (done < length) {
      ssize_t n = ::pread(fd_, bytes + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::ErrnoToStatus(errno, "read module file");
      }
      if (n == 0) return absl::DataLossError("module file shrank while it was checked");
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  // The PT_LOAD segments, for translating addresses.
  void set_loads(std::vector<Elf64_Phdr> loads) { loads_ = std::move(loads); }

  // The file offset of [vaddr, vaddr + length) if it lies in the file-backed
  // part of one PT_LOAD (the part the loader maps from the file).
  std::optional<uint64_t> OffsetOf(uint64_t vaddr, uint64_t length) const {
    for (const Elf64_Phdr& load : loads_) {
      if (vaddr < load.p_vaddr) continue;
      uint64_t into = vaddr - load.p_vaddr;
      if (into > load.p_filesz || length > load.p_filesz - into) continue;
      return load.p_offset + into;
    }
    return std::nullopt;
  }

  // True if [vaddr, vaddr + length) lies in the memory image of a PT_LOAD.
  bool Mapped(uint64_t vaddr, uint64_t length) const {
    for (const Elf64_Phdr& load : loads_) {
      if (vaddr >= load.p_vaddr && vaddr - load.p_vaddr <= load.p_memsz &&
          length <= load.p_memsz - (vaddr - load.p_vaddr)) {
        return true;
      }
    }
    return false;
  }

 private:
  int fd_;
  uint64_t size_;
  bool loaded_ = false;
  std::string bytes_;
  std::vector<Elf64_Phdr> loads_;
};

// What the dynamic section says about the symbol lookup tables.
struct DynamicTables {
  uint64_t strtab = 0, strsz = 0, symtab = 0, syment = sizeof(Elf64_Sym), hash = 0, gnu_hash = 0;
  bool has_strtab = false, has_strsz = false, has_symtab = false, has_hash = false, has_gnu_hash = false;
};

// The structural checks; the caller adds the path and the likely cause.
class ImageChecker {
 public:
  explicit ImageChecker(Image& image) : image_(image) {}

  // Returns the reason the image is broken, or "" if it is sound; I/O errors
  // as a status.
  absl::StatusOr<std::string> Check(const Elf64_Ehdr& header) {
    RELIB_ASSIGN_OR_RETURN(std::string reason, CheckSegments(header));
    if (!reason.empty()) return reason;
    RELIB_ASSIGN_OR_RETURN(reason, CheckSections(header));
    if (!reason.empty()) return reason;
    RELIB_ASSIGN_OR_RETURN(reason, CheckDynamic());
    return reason;
  }

  // After Check: true for a position-independent executable (ET_DYN too, but
  // dlopen refuses it).
  bool executable() const { return executable_; }

  // After Check: the descriptor symbol's state in the dynamic symbol table.
  enum class Descriptor { kMissing, kUndefined, kDefined };
  absl::StatusOr<Descriptor> FindDescriptor(std::string* reason);

 private:
  absl::StatusOr<std::string> CheckSegments(const Elf64_Ehdr& header);
  absl::StatusOr<std::string> CheckSections(const Elf64_Ehdr& header);
  absl::StatusOr<std::string> CheckDynamic();
  // Number of dynamic symbols, from DT_HASH or DT_GNU_HASH; "" or a reason.
  absl::StatusOr<std::string> CountSymbols(uint64_t* count);

  Image& image_;
  Elf64_Phdr dynamic_{};
  DynamicTables tables_;
  bool executable_ = false;
};

absl::StatusOr<std::string> ImageChecker::CheckSegments(const Elf64_Ehdr& header) {
  if (header.e_phentsize != sizeof(Elf64_Phdr) || header.e_phnum == 0 || header.e_phnum == PN_XNUM) {
    return absl::StrCat("bad program header table (", header.e_phnum, " entries of ", header.e_phentsize,
                        " bytes)");
  }
  uint64_t table_bytes = uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
  if (!image_.InFile(header.e_phoff, table_bytes)) {
    return absl::StrCat("the program headers (at byte ", header.e_phoff, ") extend beyond the end of the file");
  }
  std::vector<Elf64_Phdr> headers(header.e_phnum);
  RELIB_RETURN_IF_ERROR(image_.Read(header.e_phoff, headers.data(), table_bytes));
  std::vector<Elf64_Phdr> loads;
  int dynamics = 0;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  for (size_t i = 0; i < headers.size(); ++i) {
    const Elf64_Phdr& ph = headers[i];
    if (ph.p_type == PT_DYNAMIC) {
      dynamic_ = ph;
      ++dynamics;
    }
    if (ph.p_type != PT_LOAD) continue;
    std::string segment = absl::StrCat("loadable segment ", loads.size(), " (program header ", i, ", file bytes ",
                                       ph.p_offset, "..", ph.p_offset + ph.p_filesz, ")");
    if (!image_.InFile(ph.p_offset, ph.p_filesz)) {
      return absl::StrCat(segment, " extends beyond the end of the file at byte ", image_.size());
    }
    if (ph.p_filesz > ph.p_memsz) {
      return absl::StrCat(segment, " holds more file bytes than memory (", ph.p_filesz, " > ", ph.p_memsz, ")");
    }
    if (ph.p_align > 1 && (!IsPowerOfTwo(ph.p_align) || ph.p_vaddr % ph.p_align != ph.p_offset % ph.p_align)) {
      return absl::StrCat(segment, " has a bad alignment (", ph.p_align, ")");
    }
    if (ph.p_vaddr % page != ph.p_offset % page) {
      return absl::StrCat(segment, " is not page-aligned like its address");
    }
    if (!loads.empty() && ph.p_vaddr < loads.back().p_vaddr + loads.back().p_memsz) {
      return absl::StrCat(segment, " overlaps or precedes the previous one");
    }
    loads.push_back(ph);
  }
  if (loads.empty()) return std::string("there is no loadable segment");
  if (dynamics != 1) return absl::StrCat("there are ", dynamics, " dynamic segments instead of one");
  image_.set_loads(std::move(loads));
  return std::string();
}

absl::StatusOr<std::string> ImageChecker::CheckSections(const Elf64_Ehdr& header) {
  if (header.e_shoff == 0) return std::string();  // section headers are optional
  if (header.e_shentsize != sizeof(Elf64_Shdr)) {
    return absl::StrCat("bad section header size ", header.e_shentsize);
  }
  if (!image_.InFile(header.e_shoff, sizeof(Elf64_Shdr))) {
    return absl::StrCat("the section headers (at byte ", header.e_shoff, ") lie beyond the end of the file at byte ",
                        image_.size());
  }
  Elf64_Shdr first;
  RELIB_RETURN_IF_ERROR(image_.Read(header.e_shoff, &first, sizeof(first)));
  uint64_t count = header.e_shnum != 0 ? header.e_shnum : first.sh_size;  // extended numbering
  uint64_t names = header.e_shstrndx != SHN_XINDEX ? header.e_shstrndx : first.sh_link;
  if (count < 2 || count > image_.size() / sizeof(Elf64_Shdr) ||
      !image_.InFile(header.e_shoff, count * sizeof(Elf64_Shdr))) {
    return absl::StrCat("the section headers (", count, " at byte ", header.e_shoff,
                        ") extend beyond the end of the file at byte ", image_.size());
  }
  if (names == SHN_UNDEF || names >= count) return absl::StrCat("bad section name table index ", names);
  std::vector<Elf64_Shdr> sections(count);
  RELIB_RETURN_IF_ERROR(image_.Read(header.e_shoff, sections.data(), count * sizeof(Elf64_Shdr)));
  static const Elf64_Shdr kZero{};
  for (uint64_t i = 1; i < count; ++i) {
    const Elf64_Shdr& section = sections[i];
    if (std::memcmp(&section, &kZero, sizeof(section)) == 0) return absl::StrCat("section header ", i, " is all zero");
    if (section.sh_type != SHT_NOBITS && !image_.InFile(section.sh_offset, section.sh_size)) {
      return absl::StrCat("section ", i, " (file bytes ", section.sh_offset, "..", section.sh_offset + section.sh_size,
                          ") extends beyond the end of the file at byte ", image_.size());
    }
  }
  const Elf64_Shdr& strings = sections[names];
  if (strings.sh_type != SHT_STRTAB || strings.sh_size == 0) {
    return absl::StrCat("the section name table (section ", names, ") is not a string table");
  }
  std::string table(strings.sh_size, '\0');
  RELIB_RETURN_IF_ERROR(image_.Read(strings.sh_offset, table.data(), table.size()));
  if (table.front() != '\0' || table.back() != '\0') return std::string("the section name table is damaged");
  bool named = false;
  for (uint64_t i = 1; i < count; ++i) {
    if (sections[i].sh_name >= table.size()) return absl::StrCat("section ", i, " has a name outside the name table");
    named = named || sections[i].sh_name != 0;
  }
  if (!named) return std::string("no section has a name");
  return std::string();
}

absl::StatusOr<std::string> ImageChecker::CheckDynamic() {
  constexpr uint64_t kEntry = sizeof(Elf64_Dyn);
  if (!image_.InFile(dynamic_.p_offset, dynamic_.p_filesz) || dynamic_.p_filesz < kEntry) {
    return absl::StrCat("the dynamic section (file bytes ", dynamic_.p_offset, "..",
                        dynamic_.p_offset + dynamic_.p_filesz, ") is empty or beyond the end of the file");
  }
  std::optional<uint64_t> at = image_.OffsetOf(dynamic_.p_vaddr, dynamic_.p_filesz);
  if (!at || *at != dynamic_.p_offset) {
    return std::string("the dynamic section does not lie in the file-backed part of a loadable segment");
  }
  std::vector<Elf64_Dyn> entries(dynamic_.p_filesz / kEntry);
  RELIB_RETURN_IF_ERROR(image_.Read(dynamic_.p_offset, entries.data(), entries.size() * kEntry));
  bool terminated = false;
  for (const Elf64_Dyn& entry : entries) {
    if (entry.d_tag == DT_NULL) {
      terminated = true;
      break;
    }
    switch (entry.d_tag) {
      case DT_STRTAB: tables_.strtab = entry.d_un.d_ptr; tables_.has_strtab = true; break;
      case DT_STRSZ: tables_.strsz = entry.d_un.d_val; tables_.has_strsz = true; break;
      case DT_SYMTAB: tables_.symtab = entry.d_un.d_ptr; tables_.has_symtab = true; break;
      case DT_SYMENT: tables_.syment = entry.d_un.d_val; break;
      case DT_HASH: tables_.hash = entry.d_un.d_ptr; tables_.has_hash = true; break;
      case DT_GNU_HASH: tables_.gnu_hash = entry.d_un.d_ptr; tables_.has_gnu_hash = true; break;
      case DT_FLAGS_1: executable_ = (entry.d_un.d_val & DF_1_PIE) != 0; break;
      default: break;
    }
  }
  if (!terminated) return std::string("the dynamic section has no DT_NULL terminator");
  if (!tables_.has_strtab || !tables_.has_strsz) return std::string("the dynamic section names no string table");
  if (!tables_.has_symtab) return std::string("the dynamic section names no symbol table");
  if (!tables_.has_hash && !tables_.has_gnu_hash) return std::string("the dynamic section names no hash table");
  if (tables_.syment != sizeof(Elf64_Sym)) return absl::StrCat("bad dynamic symbol size ", tables_.syment);
  if (!image_.OffsetOf(tables_.strtab, tables_.strsz) || tables_.strsz == 0) {
    return std::string("the dynamic string table does not lie in the file-backed part of a loadable segment");
  }
  if (!image_.OffsetOf(tables_.symtab, sizeof(Elf64_Sym))) {
    return std::string("the dynamic symbol table does not lie in the file-backed part of a loadable segment");
  }
  return std::string();
}

absl::StatusOr<std::string> ImageChecker::CountSymbols(uint64_t* count) {
  auto read_words = [&](uint64_t vaddr, uint64_t words, std::vector<uint32_t>* out) -> absl::StatusOr<bool> {
    std::optional<uint64_t> at = image_.OffsetOf(vaddr, words * 4);
    if (!at || words > image_.size()) return false;
    out->resize(words);
    RELIB_RETURN_IF_ERROR(image_.Read(*at, out->data(), words * 4));
    return true;
  };
  const char* outside = "the symbol hash table does not lie in the file-backed part of a loadable segment";
  std::vector<uint32_t> words;
  if (tables_.has_hash) {
    // nbucket, nchain, buckets, chains: one chain entry per symbol.
    RELIB_ASSIGN_OR_RETURN(bool ok, read_words(tables_.hash, 2, &words));
    if (!ok) return std::string(outside);
    uint64_t buckets = words[0], chains = words[1];
    RELIB_ASSIGN_OR_RETURN(ok, read_words(tables_.hash, 2 + buckets + chains, &words));
    if (!ok) return std::string(outside);
    *count = chains;
    return std::string();
  }
  // nbuckets, symoffset, bloom words (64-bit), shift; buckets; then one chain
  // word per hashed symbol, the last of each chain with bit 0 set.
  RELIB_ASSIGN_OR_RETURN(bool ok, read_words(tables_.gnu_hash, 4, &words));
  if (!ok) return std::string(outside);
  uint64_t buckets = words[0], symoffset = words[1], bloom = words[2];
  uint64_t buckets_at = tables_.gnu_hash + 16 + bloom * 8;
  RELIB_ASSIGN_OR_RETURN(ok, read_words(buckets_at, buckets, &words));
  if (!ok) return std::string(outside);
  uint64_t last = 0;
  for (uint32_t bucket : words) last = std::max<uint64_t>(last, bucket);
  if (last == 0) {
    *count = symoffset;
    return std::string();
  }
  if (last < symoffset) return std::string("the GNU hash table is damaged");
  uint64_t chains_at = buckets_at + buckets * 4;
  for (uint64_t index = last;; ++index) {
    RELIB_ASSIGN_OR_RETURN(ok, read_words(chains_at + (index - symoffset) * 4, 1, &words));
    if (!ok) return std::string(outside);
    if (words[0] & 1) {
      *count = index + 1;
      return std::string();
    }
  }
}

absl::StatusOr<ImageChecker::Descriptor> ImageChecker::FindDescriptor(std::string* reason) {
  uint64_t count = 0;
  RELIB_ASSIGN_OR_RETURN(*reason, CountSymbols(&count));
  if (!reason->empty()) return Descriptor::kMissing;
  std::optional<uint64_t> symbols_at =
      count <= image_.size() / sizeof(Elf64_Sym) ? image_.OffsetOf(tables_.symtab, count * sizeof(Elf64_Sym))
                                                 : std::nullopt;
  if (!symbols_at) {
    *reason = absl::StrCat("the dynamic symbol table (", count,
                           " symbols) does not lie in the file-backed part of a loadable segment");
    return Descriptor::kMissing;
  }
  std::vector<Elf64_Sym> symbols(count);
  RELIB_RETURN_IF_ERROR(image_.Read(*symbols_at, symbols.data(), count * sizeof(Elf64_Sym)));
  std::string strings(tables_.strsz, '\0');
  RELIB_RETURN_IF_ERROR(image_.Read(*image_.OffsetOf(tables_.strtab, tables_.strsz), strings.data(), strings.size()));
  const std::string_view wanted(RELIB_DESCRIPTOR_SYMBOL_NAME);
  Descriptor found = Descriptor::kMissing;
  for (const Elf64_Sym& symbol : symbols) {
    if (symbol.st_name >= strings.size()) {
      *reason = "a dynamic symbol's name lies outside the dynamic string table";
      return Descriptor::kMissing;
    }
    std::string_view name(strings.data() + symbol.st_name, strnlen(strings.data() + symbol.st_name,
                                                                    strings.size() - symbol.st_name));
    if (name != wanted) continue;
    int bind = ELF64_ST_BIND(symbol.st_info);
    int visibility = ELF64_ST_VISIBILITY(symbol.st_other);
    if (symbol.st_shndx == SHN_UNDEF || (bind != STB_GLOBAL && bind != STB_WEAK && bind != STB_GNU_UNIQUE) ||
        (visibility != STV_DEFAULT && visibility != STV_PROTECTED)) {
      found = Descriptor::kUndefined;
      continue;
    }
    if (symbol.st_shndx != SHN_ABS && !image_.Mapped(symbol.st_value, symbol.st_size)) {
      *reason = "the descriptor symbol points outside the loadable segments";
      return Descriptor::kMissing;
    }
    return Descriptor::kDefined;
  }
  return found;
}

}  // namespace

absl::StatusOr<common::UniqueFd> OpenSharedObject(const std::string& path, struct stat* st) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("module file ", path, " does not exist"));
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open module file ", path));
  }
  if (::fstat(fd.get(), st) != 0) return absl::ErrnoToStatus(errno, "fstat " + path);
  if (!S_ISREG(st->st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  Elf64_Ehdr header;
  ssize_t n = ::pread(fd.get(), &header, sizeof(header), 0);
  if (n < 0) return absl::ErrnoToStatus(errno, "read " + path);
  RELIB_RETURN_IF_ERROR(CheckHeader(header, static_cast<size_t>(n), path));
  return fd;
}

absl::Status CheckSharedObject(const std::string& path) {
  struct stat st;
  return OpenSharedObject(path, &st).status();
}

namespace {

// CheckModuleImage on an open file of `size` bytes.
absl::Status CheckImage(Image& image, const std::string& display_path) {
  Elf64_Ehdr header{};
  size_t header_bytes = std::min<uint64_t>(sizeof(header), image.size());
  RELIB_RETURN_IF_ERROR(image.Read(0, &header, header_bytes));
  RELIB_RETURN_IF_ERROR(CheckHeader(header, header_bytes, display_path));
  if (header.e_ident[EI_DATA] != ELFDATA2LSB || header.e_ident[EI_VERSION] != EV_CURRENT) {
    return absl::InvalidArgumentError(absl::StrCat(display_path, " is not a little-endian ELF version 1 file"));
  }
  auto broken = [&](const std::string& reason) {
    return absl::InvalidArgumentError(absl::StrCat(display_path, " cannot be loaded: ", reason,
                                                   "; the file looks incomplete (still being written?) or damaged"));
  };
  ImageChecker checker(image);
  RELIB_ASSIGN_OR_RETURN(std::string reason, checker.Check(header));
  if (!reason.empty()) return broken(reason);
  if (checker.executable()) {
    return absl::InvalidArgumentError(
        absl::StrCat(display_path, " is a position-independent executable, not a shared object"));
  }
  RELIB_ASSIGN_OR_RETURN(ImageChecker::Descriptor descriptor, checker.FindDescriptor(&reason));
  if (!reason.empty()) return broken(reason);
  switch (descriptor) {
    case ImageChecker::Descriptor::kDefined:
      return absl::OkStatus();
    case ImageChecker::Descriptor::kUndefined:
      return absl::InvalidArgumentError(absl::StrCat(
          display_path, " is not a relib module: its descriptor symbol ", RELIB_DESCRIPTOR_SYMBOL_NAME,
          " is not defined and exported (define it with RELIB_MODULE or relib/module.h)"));
    case ImageChecker::Descriptor::kMissing:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      display_path, " is not a relib module: it does not export the descriptor symbol ", RELIB_DESCRIPTOR_SYMBOL_NAME,
      " (define it with RELIB_MODULE or relib/module.h)"));
}

// InspectPinning on the bytes of a whole file that CheckImage accepted.
absl::StatusOr<PinningFacts> PinningOf(const unsigned char* base, size_t size, const std::string& path) {
  auto in_file = [&](uint64_t offset, uint64_t length) { return offset <= size && length <= size - offset; };
  auto malformed = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed ELF (", what, ")"));
  };
  if (size < sizeof(Elf64_Ehdr)) return malformed("header");
  const auto& header = *reinterpret_cast<const Elf64_Ehdr*>(base);
  if (header.e_shoff == 0) return PinningFacts{};  // no section headers: nothing known
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

// Maps `fd` (`size` bytes) read-only for PinningOf.
absl::StatusOr<PinningFacts> MapAndInspect(int fd, size_t size, const std::string& path) {
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (mapped == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap " + path);
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { ::munmap(p, n); }
  } unmap{mapped, size};
  return PinningOf(static_cast<const unsigned char*>(mapped), size, path);
}

}  // namespace

absl::Status CheckModuleImage(const std::string& path, const std::string& display_path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open module file ", display_path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return absl::ErrnoToStatus(errno, "fstat " + display_path);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(display_path, " is not a regular file"));
  }
  Image image(fd.get(), static_cast<uint64_t>(st.st_size));
  return CheckImage(image, display_path);
}

absl::StatusOr<PinningFacts> InspectPinning(const std::string& path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "open " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return absl::ErrnoToStatus(errno, "fstat " + path);
  return MapAndInspect(fd.get(), static_cast<size_t>(st.st_size), path);
}

absl::StatusOr<PinningFacts> CheckModuleFile(int fd, const struct stat& st, const std::string& display_path) {
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(display_path, " is not a regular file"));
  }
  Image image(fd, static_cast<uint64_t>(st.st_size));
  if (image.size() <= kWholeImageBytes) RELIB_RETURN_IF_ERROR(image.LoadAll());
  RELIB_RETURN_IF_ERROR(CheckImage(image, display_path));
  if (image.data() != nullptr) return PinningOf(image.data(), static_cast<size_t>(image.size()), display_path);
  return MapAndInspect(fd, static_cast<size_t>(image.size()), display_path);
}

}  // namespace relib::agent
