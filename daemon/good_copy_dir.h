// relibd's directory of last-good copies: file-system work moved off a reload's reply path.
#ifndef RELIB_DAEMON_GOOD_COPY_DIR_H_
#define RELIB_DAEMON_GOOD_COPY_DIR_H_

#include <chrono>
#include <memory>
#include <mutex>
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
  explicit GoodCopyDir(std::string dir);

  // An unnamed, empty, writable file in the directory (mode 0600), or an
  // invalid fd if none is ready (the caller creates the file itself). Posts
  // the making of the next one, and runs the removals RemoveLater deferred:
  // one wake-up of the chore thread per reload, at its start.
  common::UniqueFd TakeSpare();
  // Removes `path` on the chore thread, unless ForgetRemoval(path) comes
  // first: at the next TakeSpare (the next copy's start, when a CPU is free;
  // not while the reply that replaced `path` goes out), or kRemovalDelay from
  // now at the latest.
  static constexpr std::chrono::milliseconds kRemovalDelay{100};
  void RemoveLater(const std::string& path);
  // Cancels a pending RemoveLater of `path`: a new copy is about to take that
  // name (CopyModuleFile replaces a leftover file itself).
  void ForgetRemoval(const std::string& path);

 private:
  struct State {
    std::string dir;
    std::mutex mutex;
    common::UniqueFd spare;
    bool making = false;
    std::set<std::string> removals;
  };
  std::shared_ptr<State> state_;
  // Last: destroyed first, so queued chores still find the state.
  common::ChoreThread chores_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_GOOD_COPY_DIR_H_
