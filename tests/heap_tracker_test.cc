// Heap accounting in this process (the test binary is an agent host, so its
// malloc and operator new are the tracked ones).
#include "agent/heap_tracker.h"

#include <malloc.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "agent/module_context.h"
#include "tests/testing.h"

namespace relib::agent {
namespace {

// Keeps the compiler from eliding malloc/free pairs.
void* volatile sink;

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

}  // namespace
}  // namespace relib::agent
