// Where relibd may load modules from: the allowed module directories
// (--allow-module-dir) and the ownership/permission checks on a module file
// and every directory between it and its allowed root, done before the file
// is copied or reaches dlopen.
#ifndef RELIB_DAEMON_MODULE_DIRS_H_
#define RELIB_DAEMON_MODULE_DIRS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace relib::daemon {

// Immutable after Create; thread-safe.
class ModuleDirs {
 public:
  // `allowed`: directories from --allow-module-dir (resolved with realpath
  // here; INVALID_ARGUMENT if one does not exist or is not a directory).
  // `self_uid`: relibd's effective uid. The policy:
  // - root, or any uid with `allowed` non-empty: a module must be inside an
  //   allowed directory (after symlinks are resolved), and the file, its
  //   directory and every directory up to and including the allowed root must
  //   be owned by root or `self_uid` and not writable by group (unless the
  //   group is root's) or others. As root with no allowed directory, every
  //   module is refused (the message says how to allow one).
  // - an ordinary user with no allowed directories: any file owned by that
  //   user (or root) and not writable by others is allowed (the developer loop).
  static absl::StatusOr<ModuleDirs> Create(const std::vector<std::string>& allowed, uid_t self_uid);

  // Checks `path` (absolute). Returns the resolved path to copy from.
  // Errors: NOT_FOUND (no such file), PERMISSION_DENIED saying what is wrong
  // and how to allow it, the errno of realpath/stat otherwise.
  absl::StatusOr<std::string> Check(const std::string& path) const;

  const std::vector<std::string>& allowed() const { return allowed_; }

 private:
  ModuleDirs(std::vector<std::string> allowed, uid_t self_uid) : allowed_(std::move(allowed)), self_uid_(self_uid) {}
  // OK if `path` (the module file itself when `is_module_file`, else one of
  // its directories) is owned by root or self and writable only by them.
  absl::Status CheckOwnership(const std::string& module_path, const std::string& path, bool is_module_file) const;

  std::vector<std::string> allowed_;
  uid_t self_uid_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_MODULE_DIRS_H_
