#include "daemon/fd_store.h"

#include <fcntl.h>

namespace relib::daemon {

void FdStore::Put(const std::string& module, const std::string& key, common::UniqueFd fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  fds_[module][key] = std::move(fd);
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

void FdStore::Drop(const std::string& module) {
  std::lock_guard<std::mutex> lock(mutex_);
  fds_.erase(module);
}

}  // namespace relib::daemon
