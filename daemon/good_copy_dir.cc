#include "daemon/good_copy_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

namespace relib::daemon {

GoodCopyDir::GoodCopyDir(std::string dir, std::optional<gid_t> group) : state_(std::make_shared<State>()) {
  state_->dir = std::move(dir);
  state_->group = group;
}

common::UniqueFd GoodCopyDir::TakeSpare() {
  common::UniqueFd spare;
  bool make = false;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    spare = std::move(state_->spare);
    if (!spare.valid() && !state_->making) make = state_->making = true;
  }
  if (make) PostMaking();
  return spare;
}

void GoodCopyDir::Replenish() {
  bool make = false;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (!state_->spare.valid() && !state_->making) make = state_->making = true;
  }
  if (make) {
    PostMaking();
  } else {
    chores_.Kick();  // removals deferred by RemoveLater run now
  }
}

void GoodCopyDir::PostMaking() {
  // Also runs the removals deferred by RemoveLater, first.
  chores_.Post([state = state_] {
    // The final mode from the start (set with fchmod: the umask applies to
    // open's mode): nobody can open an unnamed file, and the fd stays
    // writable. A file system without O_TMPFILE, or a mode or group that
    // cannot be set: no spare, the caller creates (and reports) itself.
    const mode_t mode = state->group ? 0440 : 0400;
    common::UniqueFd made(::open(state->dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, mode));
    if (made.valid() && (::fchmod(made.get(), mode) != 0 ||
                         (state->group && ::fchown(made.get(), static_cast<uid_t>(-1), *state->group) != 0))) {
      made = common::UniqueFd();
    }
    std::lock_guard<std::mutex> lock(state->mutex);
    state->making = false;
    if (!state->spare.valid()) state->spare = std::move(made);
  });
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
