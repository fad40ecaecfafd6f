#include "daemon/event_bus.h"

#include <algorithm>

namespace relib::daemon {

std::unique_ptr<EventBus::Subscription> EventBus::Subscribe() {
  std::unique_ptr<Subscription> subscription(new Subscription(*this));
  std::lock_guard<std::mutex> lock(mutex_);
  subscribers_.push_back(subscription.get());
  return subscription;
}

EventBus::Subscription::~Subscription() {
  std::lock_guard<std::mutex> lock(bus_.mutex_);
  bus_.subscribers_.remove(this);
}

bool EventBus::Subscription::Next(v1::Event* event, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(bus_.mutex_);
  bus_.changed_.wait_for(lock, timeout, [&] { return !queue_.empty() || bus_.closed_; });
  if (queue_.empty()) return false;
  *event = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool EventBus::Subscription::closed() const {
  std::lock_guard<std::mutex> lock(bus_.mutex_);
  return bus_.closed_ && queue_.empty();
}

void EventBus::Publish(v1::Event event) {
  event.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    event.set_sequence(next_sequence_++);
    for (Subscription* subscriber : subscribers_) {
      if (subscriber->queue_.size() >= kMaxQueued) subscriber->queue_.pop_front();
      subscriber->queue_.push_back(event);
    }
  }
  changed_.notify_all();
}

void EventBus::Close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
}

}  // namespace relib::daemon
