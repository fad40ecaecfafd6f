// Heap accounting in this process (the test binary is an agent host, so its
// malloc and operator new are the tracked ones).
#include "agent/heap_tracker.h"

#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/loaded_range.h"
#include "agent/module_context.h"
#include "tests/testing.h"

extern "C" void* __libc_malloc(size_t);
extern "C" void __libc_free(void*);

namespace relib::agent {
namespace {

// Keeps the compiler from eliding malloc/free pairs.
void* volatile sink;

// glibc's own malloc_usable_size (the executable defines the tracked one).
size_t GlibcUsableSize(void* p) {
  static auto real = reinterpret_cast<size_t (*)(void*)>(::dlsym(RTLD_NEXT, "malloc_usable_size"));
  return real(p);
}

int64_t SumBlocks(const std::vector<heap::Site>& sites) {
  int64_t blocks = 0;
  for (const heap::Site& site : sites) blocks += site.blocks;
  return blocks;
}

class HeapTrackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!heap::Enabled()) GTEST_SKIP() << "heap tracking is off in sanitizer builds";
    id_ = AcquireModuleId();
    ASSERT_NE(id_, kHost);
    heap::StartTracking(id_, /*capture_sites=*/true);
  }
  void TearDown() override {
    if (id_ != kHost) {
      heap::Detach(id_);
      ReleaseModuleId(id_);
    }
  }
  ModuleId id_ = kHost;
};

TEST_F(HeapTrackerTest, CountsEveryAllocationFormAndFrees) {
  std::vector<void*> blocks;
  blocks.reserve(16);  // host memory, allocated outside the module's scope
  {
    ModuleScope scope(id_);
    blocks.push_back(std::malloc(100));
    blocks.push_back(std::calloc(10, 20));
    void* aligned = nullptr;
    ASSERT_EQ(posix_memalign(&aligned, 256, 300), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned) % 256, 0u);
    blocks.push_back(aligned);
    void* page = aligned_alloc(4096, 4096);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(page) % 4096, 0u);
    blocks.push_back(page);
    blocks.push_back(memalign(64, 50));
  }
  heap::Usage usage = heap::LiveUsage(id_);
  EXPECT_EQ(usage.bytes, 100 + 200 + 300 + 4096 + 50);
  EXPECT_EQ(usage.blocks, 5);
  EXPECT_EQ(malloc_usable_size(blocks[0]), 100u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(static_cast<unsigned char*>(blocks[1])[i], 0);
  for (void* p : blocks) std::free(p);  // freed from host scope: still the module's blocks
  usage = heap::LiveUsage(id_);
  EXPECT_EQ(usage.bytes, 0);
  EXPECT_EQ(usage.blocks, 0);
}

TEST_F(HeapTrackerTest, OperatorNewAndStdContainers) {
  std::string* text;
  {
    ModuleScope scope(id_);
    text = new std::string(1000, 'x');
    auto* array = new int[10];
    delete[] array;
  }
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 2);  // the string object and its buffer
  delete text;
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

TEST_F(HeapTrackerTest, ReallocKeepsContentsAndMovesOwnership) {
  char* p = static_cast<char*>(std::malloc(16));  // host block
  std::strcpy(p, "hello");
  {
    ModuleScope scope(id_);
    p = static_cast<char*>(std::realloc(p, 100000));
  }
  EXPECT_STREQ(p, "hello");
  EXPECT_EQ(heap::LiveUsage(id_).bytes, 100000);
  p = static_cast<char*>(std::realloc(p, 10));
  EXPECT_STREQ(p, "hello");
  EXPECT_EQ(heap::LiveUsage(id_).bytes, 0);  // now a host block
  std::free(p);
}

TEST_F(HeapTrackerTest, ThreadsCountIntoTheModuleConcurrently) {
  constexpr int kThreads = 4, kBlocks = 10000;
  std::vector<std::vector<void*>> kept(kThreads);
  for (auto& k : kept) k.reserve(kBlocks);  // host memory
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ModuleScope scope(id_);
      for (int i = 0; i < kBlocks; ++i) {
        void* p = std::malloc(8 + i % 64);
        if (i % 2) {
          std::free(p);
        } else {
          kept[t].push_back(p);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(heap::LiveUsage(id_).blocks, kThreads * kBlocks / 2);
  // FreeAll takes them all; the vectors' own storage is host memory.
  heap::Usage freed = heap::FreeAll(id_);
  EXPECT_EQ(freed.blocks, kThreads * kBlocks / 2);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

TEST_F(HeapTrackerTest, DetachHandsBlocksToTheHost) {
  void* p;
  {
    ModuleScope scope(id_);
    p = std::malloc(777);
    sink = p;
  }
  heap::Usage detached = heap::Detach(id_);
  EXPECT_EQ(detached.bytes, 777);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  std::free(p);  // a host block now; freeing it must not touch the module's lists
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

TEST_F(HeapTrackerTest, SitesNameTheCaller) {
  void* p;
  {
    ModuleScope scope(id_);
    p = std::malloc(4321);
    sink = p;
  }
  auto sites = heap::TopSites(id_, 5);
  ASSERT_EQ(sites.size(), 1u);
  EXPECT_EQ(sites[0].bytes, 4321);
  EXPECT_NE(sites[0].address, nullptr);
  std::free(p);
}

TEST_F(HeapTrackerTest, OverflowingRequestsFailCleanly) {
  ModuleScope scope(id_);
  EXPECT_EQ(std::calloc(SIZE_MAX / 2, 4), nullptr);
  EXPECT_EQ(std::malloc(SIZE_MAX - 8), nullptr);
  void* p = nullptr;
  EXPECT_EQ(posix_memalign(&p, 3, 10), EINVAL);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

// The tracker finds its trailer from glibc's chunk header; glibc's own
// malloc_usable_size must agree, for every kind of chunk (tcache sizes, bins,
// aligned, mmapped), in host and module scope.
TEST_F(HeapTrackerTest, TrailerSitsAtTheEndOfGlibcsUsableSize) {
  for (bool in_module : {false, true}) {
    std::vector<void*> blocks;
    {
      ModuleScope scope(in_module ? id_ : kHost);
      for (size_t size : {0, 1, 8, 15, 16, 24, 100, 1000, 1024, 1025, 1032, 4096, 70000, 300000, 5000000}) {
        blocks.push_back(std::malloc(size));
        blocks.push_back(aligned_alloc(64, size + 64));
        blocks.push_back(std::calloc(1, size));
      }
    }
    for (void* p : blocks) {
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u);
      EXPECT_LE(malloc_usable_size(p) + 8, GlibcUsableSize(p)) << p;
      if (!in_module) {
        EXPECT_EQ(malloc_usable_size(p) + 8, GlibcUsableSize(p)) << p;
      }
    }
    for (void* p : blocks) std::free(p);
  }
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

// A multiple of 16 bytes gets the plain request's size class (1 KiB stays in
// glibc's tcache): the trailer lives in the chunk's slack. The chunk a plain
// request of the same size just gave back to tcache is handed out again.
TEST_F(HeapTrackerTest, MultiplesOfSixteenKeepTheirSizeClass) {
  {
    ModuleScope scope(id_);
    std::free(std::malloc(16));  // this thread's record exists from here on
  }
  for (size_t size = 16; size <= 1024; size += 16) {
    for (bool in_module : {false, true}) {
      void* drained[256];  // empties the size's tcache bin (and the bins that refill it)
      for (void*& p : drained) p = __libc_malloc(size);
      void* plain = __libc_malloc(size);
      __libc_free(plain);
      void* tracked;
      {
        ModuleScope scope(in_module ? id_ : kHost);
        tracked = std::malloc(size);
        sink = tracked;
      }
      EXPECT_EQ(tracked, plain) << size << (in_module ? " in module scope" : " in host scope");
      std::free(tracked);
      for (void* p : drained) __libc_free(p);
    }
  }
}

// Blocks allocated on one thread and freed on another (remote frees), while
// the allocating thread keeps allocating (it reuses the slots others freed).
TEST_F(HeapTrackerTest, BlocksFreedOnAnotherThread) {
  constexpr int kRounds = 200, kBatch = 500;
  std::mutex mutex;
  std::vector<void*> handed;  // host memory
  handed.reserve(kRounds * kBatch);
  std::atomic<bool> done{false};
  std::vector<void*> kept;
  kept.reserve(kRounds);
  std::thread producer([&] {
    ModuleScope scope(id_);
    std::vector<void*> batch;
    batch.reserve(kBatch);
    for (int round = 0; round < kRounds; ++round) {
      batch.clear();
      for (int i = 0; i < kBatch; ++i) batch.push_back(std::malloc(16 + i % 200));
      void* mine = std::malloc(48);
      kept.push_back(mine);
      std::lock_guard<std::mutex> lock(mutex);
      handed.insert(handed.end(), batch.begin(), batch.end());
    }
    done = true;
  });
  std::thread consumer([&] {  // host scope: the blocks stay the module's until freed
    for (;;) {
      bool finished = done.load();
      std::vector<void*> take;
      {
        std::lock_guard<std::mutex> lock(mutex);
        take.swap(handed);
        handed.reserve(kRounds * kBatch);
      }
      for (void* p : take) std::free(p);
      if (finished && take.empty()) break;
    }
  });
  producer.join();
  consumer.join();
  heap::Usage usage = heap::LiveUsage(id_);
  EXPECT_EQ(usage.blocks, kRounds);
  EXPECT_EQ(usage.bytes, kRounds * 48);
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 100)), kRounds);
  for (void* p : kept) std::free(p);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  EXPECT_EQ(heap::LiveUsage(id_).bytes, 0);
}

// The threads that allocated are gone: their blocks are still the module's,
// new threads take over their books, and FreeAll finds every block.
TEST_F(HeapTrackerTest, FreeAllAfterTheAllocatingThreadsExited) {
  constexpr int kThreads = 4, kBlocks = 1000;
  for (int generation = 0; generation < 3; ++generation) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        ModuleScope scope(id_);
        for (int i = 0; i < kBlocks; ++i) sink = std::malloc(32);
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(heap::LiveUsage(id_).blocks, (generation + 1) * kThreads * kBlocks);
  }
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 10)), 3 * kThreads * kBlocks);
  heap::Usage freed = heap::FreeAll(id_);
  EXPECT_EQ(freed.blocks, 3 * kThreads * kBlocks);
  EXPECT_EQ(freed.bytes, 3 * kThreads * kBlocks * 32);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  EXPECT_TRUE(heap::TopSites(id_, 10).empty());
}

// Walks (TopSites, LiveUsage) while two threads allocate and free as fast as
// they can: the books stay exact.
TEST_F(HeapTrackerTest, WalksWhileTwoThreadsAllocate) {
  constexpr int kKept = 1000;
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::vector<std::vector<void*>> kept(2);
  for (auto& k : kept) k.reserve(kKept);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      ModuleScope scope(id_);
      for (int i = 0; i < kKept; ++i) kept[t].push_back(std::malloc(64));
      ++ready;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 100; ++i) {
          void* p = std::malloc(16 << (i % 8));
          sink = p;
          std::free(p);
          std::free(kept[t][i]);
          kept[t][i] = std::malloc(64);
        }
      }
    });
  }
  while (ready.load() < 2) std::this_thread::yield();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  int walks = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    int64_t blocks = SumBlocks(heap::TopSites(id_, 1000));
    EXPECT_GE(blocks, 2 * kKept - 2);  // each thread may hold one block more or less
    EXPECT_LE(blocks, 2 * kKept + 2);
    ++walks;
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // walks are rare: let owners in
  }
  stop = true;
  for (auto& thread : threads) thread.join();
  EXPECT_GT(walks, 10);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 2 * kKept);
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 1000)), 2 * kKept);
  heap::Usage detached = heap::Detach(id_);
  EXPECT_EQ(detached.blocks, 2 * kKept);
  for (auto& k : kept) {
    for (void* p : k) std::free(p);  // host blocks now
  }
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

// Walks that change the owners' lists (Detach: every live entry back on its
// record's free list, the lists rebuilt, under the owners' feet) hundreds of
// times while two threads allocate and free as fast as they can; afterwards
// the same records hand out every entry once and the books agree (counters,
// the entries TopSites walks, what FreeAll frees). A stress test: a race
// the walk handshake excludes must land to show (a mutant whose owners
// ignored a pending walk passed it); OwnersWaitForAPendingWalk tests the
// handshake itself, deterministically.
TEST_F(HeapTrackerTest, OwnersAllocateAndFreeThroughDetachingWalks) {
  constexpr int kKept = 256;
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      ModuleScope scope(id_);
      std::vector<void*> kept(kKept);
      ++ready;
      for (unsigned i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        void* p = std::malloc(16 << (i % 6));
        sink = p;
        std::free(p);
        std::free(kept[i % kKept]);  // a module block, or a host block since a Detach
        kept[i % kKept] = std::malloc(48);
      }
      for (void* p : kept) std::free(p);
    });
  }
  while (ready.load() < 2) std::this_thread::yield();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(400);
  int walks = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    heap::Detach(id_);
    heap::StartTracking(id_, /*capture_sites=*/true);
    ++walks;
  }
  stop = true;
  for (auto& thread : threads) thread.join();
  EXPECT_GT(walks, 100);
  // The threads freed every block they kept: the books say none is left.
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  EXPECT_EQ(heap::LiveUsage(id_).bytes, 0);
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 1000)), 0);
  heap::Usage left = heap::Detach(id_);
  EXPECT_EQ(left.blocks, 0);
  EXPECT_EQ(left.bytes, 0);
  heap::StartTracking(id_, /*capture_sites=*/true);
  // The records the two threads used, with their lists as the walks left
  // them, are adopted again: every entry must be handed out once.
  constexpr int kBlocks = 3000;
  std::vector<std::thread> checkers;
  for (int t = 0; t < 2; ++t) {
    checkers.emplace_back([&] {
      ModuleScope scope(id_);
      for (int i = 0; i < kBlocks; ++i) sink = std::malloc(32);
    });
  }
  for (auto& thread : checkers) thread.join();
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 2 * kBlocks);
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 1000)), 2 * kBlocks);
  heap::Usage freed = heap::FreeAll(id_);
  EXPECT_EQ(freed.blocks, 2 * kBlocks);
  EXPECT_EQ(freed.bytes, 2 * kBlocks * 32);
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

// The walk handshake, deterministically: while a walk holds the owners out
// (WhileWalkingForTesting, as TopSites, FreeAll and Detach do), an owner
// with a free entry at hand and a live block in its first chunk calls malloc,
// then free, in module scope: neither returns before the walk ends. A mutant
// whose owners ignore kWalkPending (EnterOwnSection's gate without the bit)
// returns from both at once.
struct HeldWalk {
  std::atomic<int>* step;
  int next;                    // the step that lets the owner go
  std::atomic<bool>* returned;  // set by the owner when its call returned
  bool returned_during_walk = false;
};
// Inside the walk: lets the owner go, then gives its call 300 ms to return.
void HoldWalk(void* context) {
  auto* held = static_cast<HeldWalk*>(context);
  held->step->store(held->next);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (!held->returned->load() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  held->returned_during_walk = held->returned->load();
}

TEST_F(HeapTrackerTest, OwnersWaitForAPendingWalk) {
  std::atomic<int> step{0};
  std::atomic<bool> malloc_returned{false};
  std::atomic<bool> free_returned{false};
  std::thread owner([&] {
    ModuleScope scope(id_);
    void* live = std::malloc(48);  // a live block of the first chunk
    sink = live;
    std::free(std::malloc(48));  // and a free entry at hand
    step = 1;
    while (step.load() != 2) std::this_thread::yield();
    void* fresh = std::malloc(64);  // during the first walk
    sink = fresh;
    malloc_returned = true;
    while (step.load() != 3) std::this_thread::yield();
    std::free(live);  // during the second walk
    free_returned = true;
    std::free(fresh);
  });
  while (step.load() != 1) std::this_thread::yield();
  HeldWalk first{&step, 2, &malloc_returned};
  heap::WhileWalkingForTesting(&HoldWalk, &first);
  EXPECT_FALSE(first.returned_during_walk) << "malloc in module scope returned while a walk was pending";
  while (!malloc_returned.load()) std::this_thread::yield();  // released with the walk
  HeldWalk second{&step, 3, &free_returned};
  heap::WhileWalkingForTesting(&HoldWalk, &second);
  EXPECT_FALSE(second.returned_during_walk) << "free in module scope returned while a walk was pending";
  owner.join();
  EXPECT_TRUE(free_returned.load());
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 100)), 0);
}

// A child forked while another thread allocates and frees module memory finds
// the books consistent and nothing locked: it allocates, walks and frees.
TEST_F(HeapTrackerTest, ForkWhileAnotherThreadAllocates) {
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    ModuleScope scope(id_);
    while (!stop.load(std::memory_order_relaxed)) {
      void* p = std::malloc(100);
      sink = p;
      std::free(p);
    }
  });
  for (int i = 0; i < 20; ++i) {
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::alarm(10);  // a hang becomes SIGALRM
      heap::Usage before = heap::LiveUsage(id_);
      {
        ModuleScope scope(id_);
        for (int j = 0; j < 1000; ++j) sink = std::malloc(16);
      }
      heap::Usage after = heap::LiveUsage(id_);
      int64_t sites = SumBlocks(heap::TopSites(id_, 100));
      heap::Usage freed = heap::FreeAll(id_);
      bool ok = after.blocks - before.blocks == 1000 && sites == after.blocks && freed.blocks == after.blocks &&
                heap::LiveUsage(id_).blocks == 0;
      ::_exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  }
  stop = true;
  churn.join();
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
}

// Invalid frees by module code, under the leak policy (refused, nothing
// freed): this test's own code counts as the module's.
int FindExecutable(dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') return 0;
  relib::agent::LoadedRange range = relib::agent::LoadedRangeOf(*info);
  static_cast<uintptr_t*>(out)[0] = range.start;
  static_cast<uintptr_t*>(out)[1] = range.end;
  return 1;
}

void* Launder(void* p) {
  asm volatile("" : "+r"(p));
  return p;
}

TEST_F(HeapTrackerTest, InvalidFreesByModuleCodeAreRefused) {
  uintptr_t range[2] = {0, 0};
  dl_iterate_phdr(&FindExecutable, range);
  SetModuleRange(id_, range[0], range[1]);
  SetModuleName(id_, "self");
  ModuleId other = AcquireModuleId();
  ASSERT_NE(other, kHost);
  heap::StartTracking(other, false);
  heap::SetInvalidFreePolicy(heap::InvalidFreePolicy::kLeak);
  void* host = std::malloc(1024);
  std::memset(host, 0x5a, 1024);
  void* others;
  {
    ModuleScope scope(other);
    others = std::malloc(64);
  }
  alignas(16) char stack[256];
  std::memset(stack, 0x11, sizeof(stack));
  {
    ModuleScope scope(id_);
    void* own = std::malloc(256);
    std::memset(own, 0x5a, 256);
    void* freed = std::malloc(64);
    void* freed_again = Launder(freed);  // hidden from -Wuse-after-free before the first free
    std::free(freed);
    std::free(Launder(host));                             // the host's
    std::free(Launder(others));                           // another module's
    std::free(freed_again);                               // already freed
    std::free(Launder(static_cast<char*>(own) + 64));     // interior
    std::free(Launder(static_cast<char*>(host) + 512));   // interior of the host's
    std::free(Launder(stack + 64));                       // never allocated
    std::free(Launder(reinterpret_cast<void*>(1)));       // relib's 0x1
    // Headers no glibc chunk has, 0x20 bytes before a PROT_NONE page: the
    // trailer they would point at (~4 KiB on) must not be read.
    const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    auto* pages = static_cast<char*>(
        ::mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(pages, MAP_FAILED);
    ASSERT_EQ(::mprotect(pages + page, page, PROT_NONE), 0);
    for (uint64_t header : {uint64_t{0x1008}, uint64_t{0x1006}}) {
      char* user = pages + page - 0x20;
      std::memcpy(user - 8, &header, sizeof(header));
      std::free(Launder(user));  // refused (before the fix: SIGSEGV)
    }
    ::munmap(pages, 2 * page);
    EXPECT_EQ(std::realloc(Launder(host), 4096), nullptr);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(heap::LiveUsage(id_).blocks, 1);  // `own`, untouched
    std::free(own);                             // its own block: fine
    EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  }
  heap::SetInvalidFreePolicy(heap::InvalidFreePolicy::kAbort);
  EXPECT_EQ(static_cast<unsigned char*>(host)[1000], 0x5a);  // still allocated, untouched
  EXPECT_EQ(heap::LiveUsage(other).blocks, 1);
  std::free(host);
  std::free(others);
  EXPECT_EQ(heap::LiveUsage(other).blocks, 0);
  heap::Detach(other);
  ReleaseModuleId(other);
  SetModuleRange(id_, 0, 0);
}

// A thread with more live blocks than its first chunk of entries holds
// (65536): free's inline path takes only first-chunk slots, the rest go to
// the slow path, which validates them (module code frees them here) and
// must take each as the module's own: under the default abort policy a
// refused one would kill the test. Counts and walks agree throughout.
TEST_F(HeapTrackerTest, ModuleCodeFreesBlocksBeyondTheFirstChunk) {
  uintptr_t range[2] = {0, 0};
  dl_iterate_phdr(&FindExecutable, range);
  SetModuleRange(id_, range[0], range[1]);
  constexpr int kBlocks = 70000;  // slots 0..69999: the last 4464 beyond the first chunk
  std::vector<void*> blocks;
  blocks.reserve(kBlocks);  // the host's, outside the scope
  // (Checks outside the scope: TopSites's vector is the host's, and this
  // code freeing it in the scope would be an invalid free.)
  {
    ModuleScope scope(id_);
    for (int i = 0; i < kBlocks; ++i) blocks.push_back(std::malloc(16));
  }
  EXPECT_EQ(heap::LiveUsage(id_).blocks, kBlocks);
  {
    ModuleScope scope(id_);
    for (int i = kBlocks; i-- > 60000;) std::free(Launder(blocks[i]));  // beyond, then within the first chunk
  }
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 60000);
  EXPECT_EQ(SumBlocks(heap::TopSites(id_, 1000)), 60000);
  {
    ModuleScope scope(id_);
    for (int i = 0; i < 60000; ++i) std::free(Launder(blocks[i]));
  }
  EXPECT_EQ(heap::LiveUsage(id_).blocks, 0);
  EXPECT_EQ(heap::LiveUsage(id_).bytes, 0);
  SetModuleRange(id_, 0, 0);
}

}  // namespace
}  // namespace relib::agent
