// EventBus: ordering, fan-out, close.
#include "daemon/event_bus.h"

#include <thread>

#include "tests/testing.h"

namespace relib::daemon {
namespace {

TEST(EventBusTest, DeliversInOrderToEverySubscriber) {
  EventBus bus;
  auto first = bus.Subscribe();
  auto second = bus.Subscribe();
  for (int i = 0; i < 3; ++i) {
    v1::Event event;
    event.set_module("m" + std::to_string(i));
    bus.Publish(event);
  }
  for (auto* subscription : {first.get(), second.get()}) {
    for (int i = 0; i < 3; ++i) {
      v1::Event event;
      ASSERT_TRUE(subscription->Next(&event, std::chrono::milliseconds(100)));
      EXPECT_EQ(event.module(), "m" + std::to_string(i));
      EXPECT_EQ(event.sequence(), static_cast<uint64_t>(i + 1));
      EXPECT_GT(event.unix_ms(), 0);
    }
  }
}

TEST(EventBusTest, CloseWakesWaiters) {
  EventBus bus;
  auto subscription = bus.Subscribe();
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    bus.Close();
  });
  v1::Event event;
  auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(subscription->Next(&event, std::chrono::seconds(30)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_TRUE(subscription->closed());
  closer.join();
}

TEST(EventBusTest, SlowSubscriberLosesOldestNotNewest) {
  EventBus bus;
  auto subscription = bus.Subscribe();
  for (size_t i = 0; i < EventBus::kMaxQueued + 5; ++i) bus.Publish(v1::Event());
  v1::Event event;
  ASSERT_TRUE(subscription->Next(&event, std::chrono::milliseconds(10)));
  EXPECT_EQ(event.sequence(), 6u);
}

}  // namespace
}  // namespace relib::daemon
