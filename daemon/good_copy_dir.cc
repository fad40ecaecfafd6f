#include "daemon/good_copy_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <utility>

namespace relib::daemon {

GoodCopyDir::GoodCopyDir(std::string dir) : state_(std::make_shared<State>()) {
  state_->dir = std::move(dir);
}

namespace {

// A file system without O_TMPFILE: no spare, the caller creates files.
void MakeSpare(const std::string& dir, std::mutex& mutex, common::UniqueFd& spare, bool& making) {
  common::UniqueFd made(::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
  std::lock_guard<std::mutex> lock(mutex);
  making = false;
  if (!spare.valid()) spare = std::move(made);
}

}  // namespace

common::UniqueFd GoodCopyDir::TakeSpare(bool removal_follows) {
  common::UniqueFd spare;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    spare = std::move(state_->spare);
    // The RemoveLater to come makes the next one, in the same wake-up of
    // the chore thread, after the reply.
    if (state_->making || (removal_follows && spare.valid())) return spare;
    state_->making = true;
  }
  chores_.Post([state = state_] { MakeSpare(state->dir, state->mutex, state->spare, state->making); });
  return spare;
}

void GoodCopyDir::RemoveLater(const std::string& path) {
  if (path.empty()) return;
  bool make_spare;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->removals.insert(path);
    make_spare = !state_->spare.valid() && !state_->making;
    if (make_spare) state_->making = true;
  }
  chores_.Post([state = state_, path, make_spare] {
    {
      // Under the lock: ForgetRemoval either ran before (nothing to do) or
      // waits until the old file is gone, so a new copy's name is never removed.
      std::lock_guard<std::mutex> lock(state->mutex);
      if (state->removals.erase(path) > 0) ::unlink(path.c_str());
    }
    if (make_spare) MakeSpare(state->dir, state->mutex, state->spare, state->making);
  });
}

void GoodCopyDir::ForgetRemoval(const std::string& path) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->removals.erase(path);
}

}  // namespace relib::daemon
