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
// ahead for the next copy, and removes replaced copies: by TidyNow, on a
// thread that would only wait otherwise (a reload's request thread while its
// worker loads: no other thread is woken for it, which on this 2-vCPU
// machine cost the request ~18 µs per wake-up), or, as a backstop for
// removals nobody tidied, on a chore thread (common/chore_thread.h), never
// on the io thread, which reads the workers' replies.
// Thread-safe. The destructor finishes the removals still queued.
class GoodCopyDir {
 public:
  explicit GoodCopyDir(std::string dir);

  // An unnamed, empty, writable file in the directory (mode 0600), or an
  // invalid fd if none is ready (the caller creates the file itself). The
  // next one is made by the next TidyNow.
  common::UniqueFd TakeSpare();
  // On the calling thread: removes what RemoveLater deferred, then makes the
  // next spare if none is ready. Tens of µs of file-system work; for a
  // thread that would only wait meanwhile.
  void TidyNow();
  // Removes `path` unless ForgetRemoval(path) comes first: at the next
  // TidyNow (the next reload, while its worker loads; not while the reply
  // that replaced `path` goes out), or, on the chore thread, kRemovalDelay
  // from now at the latest.
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
