// Threads started through the interposed pthread_create run on an
// agent-owned alternate signal stack, unmapped when they end, including when
// they leave through pthread_exit (glibc unwinds the agent's frame then).
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/alt_stack.h"
#include "tests/testing.h"

namespace relib::agent {
namespace {

struct Seen {
  bool leave_through_pthread_exit = false;
  stack_t stack{};
};

void* Observe(void* raw) {
  auto* seen = static_cast<Seen*>(raw);
  ::sigaltstack(nullptr, &seen->stack);
  if (seen->leave_through_pthread_exit) pthread_exit(nullptr);
  return nullptr;
}

bool Mapped(const void* address) {
  auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  auto* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(address) & ~(page - 1));
  return ::msync(start, page, MS_ASYNC) == 0;  // ENOMEM once unmapped
}

void Check(bool through_pthread_exit) {
  Seen seen;
  seen.leave_through_pthread_exit = through_pthread_exit;
  pthread_t thread;
  ASSERT_EQ(pthread_create(&thread, nullptr, &Observe, &seen), 0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  ASSERT_FALSE(seen.stack.ss_flags & SS_DISABLE) << "no alternate stack";
  EXPECT_GE(seen.stack.ss_size, 64u * 1024);
  EXPECT_FALSE(Mapped(seen.stack.ss_sp)) << "alternate stack still mapped after the thread ended";
}

// A sanitizer runtime gives every thread an alternate stack of its own, so
// the agent's is not installed there.
TEST(AltStackTest, ThreadThatReturnsHadOneAndItIsGone) {
  SKIP_UNDER_SANITIZER();
  Check(false);
}
TEST(AltStackTest, ThreadThatCallsPthreadExitHadOneAndItIsGone) {
  SKIP_UNDER_SANITIZER();
  Check(true);
}

TEST(AltStackTest, ScopeInstallsAndRemovesOnlyItsOwn) {
  stack_t before;
  ::sigaltstack(nullptr, &before);
  if (!(before.ss_flags & SS_DISABLE)) GTEST_SKIP() << "this thread already has an alternate stack";
  {
    ScopedAltStack outer;
    EXPECT_TRUE(outer.installed());
    ScopedAltStack inner;  // nested: the thread already has one
    EXPECT_FALSE(inner.installed());
  }
  stack_t after;
  ::sigaltstack(nullptr, &after);
  EXPECT_TRUE(after.ss_flags & SS_DISABLE);
}

}  // namespace
}  // namespace relib::agent
