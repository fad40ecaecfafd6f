// Holds a tracker's mutex across fork(), so a child forked while another
// thread held it (module code calling signal(), fclose(), dlopen() ... in the
// child before exec) never finds it locked for ever.
#ifndef RELIB_AGENT_FORK_LOCK_H_
#define RELIB_AGENT_FORK_LOCK_H_

#include <pthread.h>

#include <mutex>

namespace relib::agent {

// Registers fork handlers that lock `Mutex` before fork and unlock it in
// parent and child. Use once per mutex, at static initialization:
//   const bool fork_locked = HoldAcrossFork<my_mutex>();
// REQUIRES: the mutex is never held while another tracker's is taken.
template <std::mutex& Mutex>
bool HoldAcrossFork() {
  return ::pthread_atfork([] { Mutex.lock(); }, [] { Mutex.unlock(); }, [] { Mutex.unlock(); }) == 0;
}

}  // namespace relib::agent

#endif  // RELIB_AGENT_FORK_LOCK_H_
