// relibd's directory of last-good copies: file-system work moved off a reload's reply path.
#ifndef RELIB_DAEMON_GOOD_COPY_DIR_H_
#define RELIB_DAEMON_GOOD_COPY_DIR_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "common/chore_thread.h"
#include "common/unique_fd.h"

namespace relib::daemon {

// Creating an inode on ext4 (the bitmap search skips recently deleted
// inodes) and unlinking one are each tens of µs. A reload needs a new inode
// for its copy and frees the previous version's; neither needs to happen
// while the client waits. This keeps one unnamed inode (O_TMPFILE) made
// ahead for the next copy, and removes replaced copies, on a chore thread
// (common/chore_thread.h): never on the io thread, which reads the workers'
// replies.
// Thread-safe. The destructor finishes the removals still queued.
class GoodCopyDir {
 public:
  // `group`: the workers' group when they run as another user; spares are
  // made owned by it.
  GoodCopyDir(std::string dir, std::optional<gid_t> group);

  // An unnamed, empty file in the directory, writable through the returned
  // fd and already in its final mode and group (0440 and `group`, else 0400:
  // a copy is read-only once named, see CopyModuleFile), or an invalid fd if
  // none is ready (the caller creates the file itself). When none is ready
  // and none is being made, posts the making of the next one at once;
  // otherwise the caller calls Replenish once a CPU is likely free.
  common::UniqueFd TakeSpare();
  // Posts the making of the next spare if none is ready or under way, and
  // runs the removals RemoveLater deferred: the chore thread's one wake-up
  // per reload, called once the command is on its way to the worker (which
  // then works for a while and leaves a CPU free), not while the client waits
  // on relibd's own steps.
  void Replenish();
  // Removes `path` on the chore thread, unless ForgetRemoval(path) comes
  // first: at the next Replenish (while the next reload's worker works; not
  // while the reply that replaced `path` goes out), or kRemovalDelay from
  // now at the latest.
  static constexpr std::chrono::milliseconds kRemovalDelay{100};
  void RemoveLater(const std::string& path);
  // Cancels a pending RemoveLater of `path`: a new copy is about to take that
  // name (CopyModuleFile replaces a leftover file itself).
  void ForgetRemoval(const std::string& path);

 private:
  struct State {
    std::string dir;
    std::optional<gid_t> group;
    std::mutex mutex;
    common::UniqueFd spare;
    bool making = false;
    std::set<std::string> removals;
  };
  // Posts the making of a spare. REQUIRES: state_->making was false and is
  // now true (set by the caller under the mutex).
  void PostMaking();

  std::shared_ptr<State> state_;
  // Last: destroyed first, so queued chores still find the state.
  common::ChoreThread chores_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_GOOD_COPY_DIR_H_
