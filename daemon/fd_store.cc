#include "daemon/fd_store.h"

#include <fcntl.h>

#include "absl/strings/str_cat.h"

namespace relib::daemon {

absl::Status FdStore::Put(const std::string& module, const std::string& key, common::UniqueFd fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& mine = fds_[module];
  if (mine.count(key) == 0 && mine.size() >= kMaxStoredFdsPerModule) {
    return absl::ResourceExhaustedError(absl::StrCat("fd store full: module '", module, "' keeps ", mine.size(),
                                                     " fds, the most relibd keeps for one module"));
  }
  mine[key] = std::move(fd);
  return absl::OkStatus();
}

std::vector<std::pair<std::string, common::UniqueFd>> FdStore::Duplicates(const std::string& module) const {
  std::vector<std::pair<std::string, common::UniqueFd>> copies;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = fds_.find(module);
  if (it == fds_.end()) return copies;
  for (const auto& [key, fd] : it->second) {
    common::UniqueFd copy(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
    if (copy.valid()) copies.emplace_back(key, std::move(copy));
  }
  return copies;
}

std::vector<std::string> FdStore::Drop(const std::string& module) {
  std::vector<std::string> keys;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = fds_.find(module);
  if (it == fds_.end()) return keys;
  for (const auto& [key, fd] : it->second) keys.push_back(key);
  fds_.erase(it);
  return keys;
}

}  // namespace relib::daemon
