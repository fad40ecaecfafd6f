#include "daemon/good_copy_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <utility>

namespace relib::daemon {

GoodCopyDir::GoodCopyDir(std::string dir) : state_(std::make_shared<State>()) {
  state_->dir = std::move(dir);
}

common::UniqueFd GoodCopyDir::TakeSpare() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return std::move(state_->spare);
}

void GoodCopyDir::TidyNow() {
  {
    // Under the lock, as the chore does: a ForgetRemoval of the same name
    // (a new copy about to take it) waits until the old file is gone.
    std::lock_guard<std::mutex> lock(state_->mutex);
    for (const std::string& path : state_->removals) ::unlink(path.c_str());
    state_->removals.clear();
    if (state_->spare.valid() || state_->making) return;
    state_->making = true;
  }
  // A file system without O_TMPFILE: no spare, the caller creates files.
  common::UniqueFd made(::open(state_->dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->making = false;
  if (!state_->spare.valid()) state_->spare = std::move(made);
}

void GoodCopyDir::RemoveLater(const std::string& path) {
  if (path.empty()) return;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->removals.insert(path);
  }
  chores_.PostDeferred(
      [state = state_, path] {
        // Under the lock: ForgetRemoval either ran before (nothing to do) or
        // waits until the old file is gone, so a new copy's name is never removed.
        std::lock_guard<std::mutex> lock(state->mutex);
        if (state->removals.erase(path) > 0) ::unlink(path.c_str());
      },
      kRemovalDelay);
}

void GoodCopyDir::ForgetRemoval(const std::string& path) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->removals.erase(path);
}

}  // namespace relib::daemon
