#include "daemon/event_bus.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace relib::daemon {

absl::Status EventBus::Attach(std::shared_ptr<Subscriber> subscriber) {
  bool closed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (subscribers_.size() >= kMaxSubscribers) {
      return absl::ResourceExhaustedError(
          absl::StrCat("relibd already serves ", kMaxSubscribers, " event subscribers; try again later"));
    }
    closed = closed_;
    if (!closed) subscribers_.push_back(subscriber);
  }
  if (closed) subscriber->OnClose();
  return absl::OkStatus();
}

void EventBus::Detach(const Subscriber* subscriber) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::erase_if(subscribers_, [&](const auto& s) { return s.get() == subscriber; });
}

size_t EventBus::subscribers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subscribers_.size();
}

std::shared_ptr<EventBus::Subscription> EventBus::Subscribe() {
  auto subscription = std::make_shared<Subscription>();
  if (!Attach(subscription).ok()) return nullptr;
  // Detached when the caller lets go of it.
  return std::shared_ptr<Subscription>(subscription.get(), [this, subscription](Subscription* s) mutable {
    Detach(s);
    subscription.reset();
  });
}

void EventBus::Publish(v1::Event event) {
  event.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count());
  std::lock_guard<std::mutex> delivery(delivery_);
  std::vector<std::shared_ptr<Subscriber>> targets;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    event.set_sequence(next_sequence_++);
    targets = subscribers_;
  }
  for (const auto& subscriber : targets) subscriber->OnEvent(event);
}

void EventBus::Close() {
  std::lock_guard<std::mutex> delivery(delivery_);
  std::vector<std::shared_ptr<Subscriber>> targets;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    targets = std::move(subscribers_);
    subscribers_.clear();
  }
  for (const auto& subscriber : targets) subscriber->OnClose();
}

void EventBus::Subscription::OnEvent(const v1::Event& event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.size() >= kMaxQueued) queue_.pop_front();
    queue_.push_back(event);
  }
  changed_.notify_all();
}

void EventBus::Subscription::OnClose() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
}

bool EventBus::Subscription::Next(v1::Event* event, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !queue_.empty() || closed_; });
  if (queue_.empty()) return false;
  *event = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool EventBus::Subscription::closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_ && queue_.empty();
}

}  // namespace relib::daemon
