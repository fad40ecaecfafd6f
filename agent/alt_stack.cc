#include "agent/alt_stack.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "agent/module_context.h"

namespace relib::agent {
namespace {

// Room for the fatal-signal handler (it records into the flight recorder and
// re-raises) plus a guard page below, so a handler that overruns faults
// instead of writing into whatever lies below.
size_t StackBytes() {
  long page = ::sysconf(_SC_PAGESIZE);
  return std::max<size_t>(64 * 1024, static_cast<size_t>(SIGSTKSZ) * 4) + static_cast<size_t>(page);
}

}  // namespace

ScopedAltStack::ScopedAltStack() {
  stack_t current{};
  if (::sigaltstack(nullptr, &current) != 0 || !(current.ss_flags & SS_DISABLE)) return;
  size_t size = StackBytes();
  void* base;
  {
    HostScope host;  // the agent's memory, never a module's mapping
    base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  }
  if (base == MAP_FAILED) return;
  size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  ::mprotect(base, page, PROT_NONE);  // guard page
  stack_t stack{};
  stack.ss_sp = static_cast<char*>(base) + page;
  stack.ss_size = size - page;
  if (::sigaltstack(&stack, nullptr) != 0) {
    HostScope host;
    ::munmap(base, size);
    return;
  }
  base_ = base;
  size_ = size;
}

ScopedAltStack::~ScopedAltStack() {
  if (base_ == nullptr) return;
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  ::sigaltstack(&off, nullptr);
  HostScope host;
  ::munmap(base_, size_);
}

}  // namespace relib::agent
