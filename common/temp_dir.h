// A private directory removed with its contents when its owner goes away.
#ifndef RELIB_COMMON_TEMP_DIR_H_
#define RELIB_COMMON_TEMP_DIR_H_

#include <string>

#include "absl/status/statusor.h"

namespace relib::common {

class TempDir {
 public:
  // Creates `<parent>/<prefix>XXXXXX` with mode 0700. Errors: the errno of mkdtemp.
  static absl::StatusOr<TempDir> Create(const std::string& parent, const std::string& prefix);

  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  TempDir& operator=(TempDir&& other) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // Removes the directory tree; errors are ignored.
  ~TempDir();

  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace relib::common

#endif  // RELIB_COMMON_TEMP_DIR_H_
