// relibd's state store never throws: a value that does not fit (larger than
// the whole segment, larger than what is free, or over the per-module limit)
// is RESOURCE_EXHAUSTED with the module, key, size and capacity named, and
// the previous value of the key stays.
#include "daemon/state_store.h"

#include <string>

#include "tests/testing.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1u << 20;

TEST(StateStoreTest, ValueAsLargeAsTheSegmentIsRefusedNotThrown) {
  auto store = daemon::StateStore::Open("", 4 * kMiB, 1024 * kMiB);
  ASSERT_THAT(store, IsOk());
  EXPECT_EQ((*store)->capacity(), 4 * kMiB);
  // Larger than the whole segment: Boost throws std::length_error here.
  for (uint64_t size : {4 * kMiB, 64 * kMiB}) {
    EXPECT_THAT((*store)->Put("m", "k", std::string(size, 'x')),
                StatusIs(absl::StatusCode::kResourceExhausted,
                         AllOf(HasSubstr("state store full"), HasSubstr("module 'm'"), HasSubstr("key 'k'"),
                               HasSubstr(std::to_string(size) + " bytes"), HasSubstr("capacity 4194304 bytes"),
                               HasSubstr("--state-store-mb"))));
  }
  EXPECT_TRUE((*store)->Get("m").empty());
}

TEST(StateStoreTest, FullStoreKeepsThePreviousValue) {
  auto store = daemon::StateStore::Open("", 4 * kMiB, 1024 * kMiB);
  ASSERT_THAT(store, IsOk());
  ASSERT_THAT((*store)->Put("m", "a", std::string(2 * kMiB, 'a')), IsOk());
  EXPECT_THAT((*store)->Put("m", "b", std::string(3 * kMiB, 'b')),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("state store full")));
  EXPECT_THAT((*store)->Put("m", "a", std::string(3 * kMiB, 'c')),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("key 'a'")));
  auto state = (*store)->Get("m");
  ASSERT_EQ(state.size(), 1u);
  EXPECT_EQ(state["a"], std::string(2 * kMiB, 'a'));
  // Replacing a value frees the old bytes: five replacements of 1.5 MiB fit
  // in 4 MiB.
  for (char fill : {'1', '2', '3', '4', '5'}) {
    ASSERT_THAT((*store)->Put("m", "a", std::string(3 * kMiB / 2, fill)), IsOk()) << fill;
  }
  EXPECT_EQ((*store)->Get("m")["a"], std::string(3 * kMiB / 2, '5'));
}

TEST(StateStoreTest, KeysAreAnyBytes) {
  auto store = daemon::StateStore::Open("", 4 * kMiB, 1024 * kMiB);
  ASSERT_THAT(store, IsOk());
  std::string binary("\0\xff\n", 3);
  ASSERT_THAT((*store)->Put("m", binary, "1"), IsOk());
  ASSERT_THAT((*store)->Put("m", "", "2"), IsOk());
  ASSERT_THAT((*store)->Put("m2", "x", "3"), IsOk());
  auto state = (*store)->Get("m");
  EXPECT_EQ(state.size(), 2u);
  EXPECT_EQ(state[binary], "1");
  EXPECT_EQ(state[""], "2");
}

TEST(StateStoreTest, ModuleStateOverWhatALoadCommandCarriesIsRefused) {
  auto store = daemon::StateStore::Open("", 4 * kMiB, kMiB);
  ASSERT_THAT(store, IsOk());
  ASSERT_THAT((*store)->Put("m", "a", std::string(kMiB / 2, 'a')), IsOk());
  EXPECT_THAT((*store)->Put("m", "b", std::string(kMiB / 2, 'b')),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("key 'b'"), HasSubstr("load command"), HasSubstr("--max-message-mb"))));
  // Replacing "a" is measured without its old value; other modules are apart.
  EXPECT_THAT((*store)->Put("m", "a", std::string(kMiB - 100, 'a')), IsOk());
  EXPECT_THAT((*store)->Put("other", "b", std::string(kMiB / 2, 'b')), IsOk());
}

}  // namespace
}  // namespace relib::testing
