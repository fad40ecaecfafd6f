#include "daemon/module_dirs.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace relib::daemon {
namespace {

absl::StatusOr<std::string> RealPath(const std::string& path) {
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(path.c_str(), nullptr), &std::free);
  if (!real) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat("module file ", path, " does not exist"));
    }
    return absl::ErrnoToStatus(errno, "realpath " + path);
  }
  return std::string(real.get());
}

std::string Octal(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "0%o", static_cast<unsigned>(mode & 07777));
  return text;
}

}  // namespace

absl::StatusOr<ModuleDirs> ModuleDirs::Create(const std::vector<std::string>& allowed, uid_t self_uid) {
  std::vector<std::string> resolved;
  for (const std::string& dir : allowed) {
    auto real = RealPath(dir);
    struct stat st {};
    if (!real.ok() || ::stat(real->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("--allow-module-dir ", dir, " is not an existing directory"));
    }
    resolved.push_back(*real == "/" ? "" : *real);  // "/" allows everything: prefix ""
  }
  return ModuleDirs(std::move(resolved), self_uid);
}

absl::Status ModuleDirs::CheckOwnership(const std::string& module_path, const std::string& path,
                                        bool is_module_file) const {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return absl::ErrnoToStatus(errno, "stat " + path);
  // A FIFO, device or directory named as the module is refused by
  // CopyModuleFile with its own message, before any byte is read.
  if (is_module_file && !S_ISREG(st.st_mode)) return absl::OkStatus();
  const bool owner_ok = st.st_uid == 0 || st.st_uid == self_uid_;
  const bool group_writes = (st.st_mode & S_IWGRP) != 0 && st.st_gid != 0;
  const bool others_write = (st.st_mode & S_IWOTH) != 0;
  if (owner_ok && !group_writes && !others_write) return absl::OkStatus();
  std::string who = !owner_ok       ? absl::StrCat("its owner, uid ", st.st_uid)
                    : others_write ? "every user"
                                   : absl::StrCat("members of group ", st.st_gid);
  return absl::PermissionDeniedError(absl::StrCat(
      "module file ", module_path, " refused: ", is_module_file ? "the file" : absl::StrCat("directory ", path),
      " (mode ", Octal(st.st_mode), ", uid ", st.st_uid, ", gid ", st.st_gid, ") can be changed by ", who,
      ", who could swap the code relibd runs; make it owned by root or relibd's user and not writable by group or "
      "others (chown root; chmod go-w)"));
}

absl::StatusOr<std::string> ModuleDirs::Check(const std::string& path) const {
  auto real = RealPath(path);
  if (!real.ok()) return real.status();
  if (allowed_.empty()) {
    if (self_uid_ == 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          "module file ", path, " refused: relibd runs as root and loads modules only from allowed directories, and "
          "none is configured; start relibd with --allow-module-dir <dir> (a directory only root can write) and put "
          "modules there"));
    }
    // An ordinary user's relibd: that user's own files.
    if (absl::Status owned = CheckOwnership(path, *real, true); !owned.ok()) return owned;
    return real;
  }
  const std::string* root = nullptr;
  for (const std::string& dir : allowed_) {
    if (real->size() > dir.size() && real->compare(0, dir.size(), dir) == 0 && (*real)[dir.size()] == '/') {
      root = &dir;
      break;
    }
  }
  if (root == nullptr) {
    std::vector<std::string> shown;
    for (const auto& dir : allowed_) shown.push_back(dir.empty() ? "/" : dir);
    return absl::PermissionDeniedError(absl::StrCat(
        "module file ", path, (*real != path ? absl::StrCat(" (", *real, ")") : ""),
        " refused: it is not inside an allowed module directory (", absl::StrJoin(shown, ", "),
        "); copy it into one, or start relibd with --allow-module-dir <its directory>"));
  }
  // The file, then each directory up to and including the allowed root.
  std::string current = *real;
  while (true) {
    if (absl::Status owned = CheckOwnership(path, current.empty() ? "/" : current, current == *real); !owned.ok()) return owned;
    if (current == *root) break;
    current = current.substr(0, current.rfind('/'));
  }
  return real;
}

}  // namespace relib::daemon
