#include "daemon/good_copy_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <utility>

namespace relib::daemon {

GoodCopyDir::GoodCopyDir(std::string dir) : state_(std::make_shared<State>()) {
  state_->dir = std::move(dir);
}

common::UniqueFd GoodCopyDir::TakeSpare() {
  common::UniqueFd spare;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    spare = std::move(state_->spare);
    if (state_->making) return spare;
    state_->making = true;
  }
  chores_.Post([state = state_] {
    // A file system without O_TMPFILE: no spare, the caller creates files.
    common::UniqueFd made(::open(state->dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
    std::lock_guard<std::mutex> lock(state->mutex);
    state->making = false;
    if (!state->spare.valid()) state->spare = std::move(made);
  });
  return spare;
}

void GoodCopyDir::RemoveLater(const std::string& path) {
  if (path.empty()) return;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->removals.insert(path);
  }
  chores_.Post([state = state_, path] {
    // Under the lock: ForgetRemoval either ran before (nothing to do) or
    // waits until the old file is gone, so a new copy's name is never removed.
    std::lock_guard<std::mutex> lock(state->mutex);
    if (state->removals.erase(path) > 0) ::unlink(path.c_str());
  });
}

void GoodCopyDir::ForgetRemoval(const std::string& path) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->removals.erase(path);
}

}  // namespace relib::daemon
