// Alternate signal stacks for threads that may run module code, so the
// worker's fatal-signal handler (installed with SA_ONSTACK) also runs when a
// module overflows its stack: without one, the kernel cannot deliver SIGSEGV
// on an exhausted stack and the process dies with nothing recorded.
#ifndef RELIB_AGENT_ALT_STACK_H_
#define RELIB_AGENT_ALT_STACK_H_

#include <cstddef>

namespace relib::agent {

// Installs an alternate signal stack for the calling thread for the scope's
// lifetime, unless the thread already has one (then it does nothing). The
// memory is mapped by the agent (never attributed to a module) and unmapped
// in the destructor after the stack is disabled. Must be destroyed on the
// thread that created it. Async-signal-safe: no.
class ScopedAltStack {
 public:
  ScopedAltStack();
  ~ScopedAltStack();
  ScopedAltStack(const ScopedAltStack&) = delete;
  ScopedAltStack& operator=(const ScopedAltStack&) = delete;

  // False if the thread already had a stack or mapping failed.
  bool installed() const { return base_ != nullptr; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_ALT_STACK_H_
