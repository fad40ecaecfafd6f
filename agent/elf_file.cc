#include "agent/elf_file.h"

#include <elf.h>
#include <fcntl.h>
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

}  // namespace relib::agent
