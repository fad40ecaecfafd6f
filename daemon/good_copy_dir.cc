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
  bool make;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    spare = std::move(state_->spare);
    make = !state_->making;
    state_->making = true;
  }
  if (!make) {
    chores_.Kick();  // removals deferred by RemoveLater run now
    return spare;
  }
  // Also runs the removals deferred by RemoveLater, first: while this
  // request copies (and then waits for its worker), a CPU is free.
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
