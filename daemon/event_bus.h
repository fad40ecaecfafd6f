// Fan-out of lifecycle events to every Events stream subscriber.
#ifndef RELIB_DAEMON_EVENT_BUS_H_
#define RELIB_DAEMON_EVENT_BUS_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// Thread-safe. Events get a sequence number and a timestamp at Publish, and
// reach every subscriber in sequence order.
class EventBus {
 public:
  // Push interface. OnEvent and OnClose run on the publishing (closing)
  // thread, with no lock of the bus held (a subscriber may detach from
  // inside them); they must not block. A subscriber may still get a call
  // that was under way when Detach returned: it is kept alive by the bus's
  // reference for that call.
  class Subscriber {
   public:
    virtual ~Subscriber() = default;
    virtual void OnEvent(const v1::Event& event) = 0;
    virtual void OnClose() = 0;
  };

  // A pull subscriber with its own queue. One that falls more than
  // kMaxQueued events behind loses the oldest ones.
  class Subscription final : public Subscriber {
   public:
    // Waits up to `timeout` for the next event. Returns false on timeout or
    // when the bus is closed and the queue drained.
    bool Next(v1::Event* event, std::chrono::milliseconds timeout);
    bool closed() const;
    void OnEvent(const v1::Event& event) override;
    void OnClose() override;

   private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<v1::Event> queue_ ABSL_GUARDED_BY(mutex_);
    bool closed_ ABSL_GUARDED_BY(mutex_) = false;
  };

  static constexpr size_t kMaxQueued = 10000;
  // At most this many subscribers at once (each Events stream is one).
  static constexpr size_t kMaxSubscribers = 256;

  // RESOURCE_EXHAUSTED when kMaxSubscribers are attached. A subscriber
  // attached after Close gets OnClose at once.
  absl::Status Attach(std::shared_ptr<Subscriber> subscriber);
  void Detach(const Subscriber* subscriber);
  // A pull subscription (detached when destroyed); nullptr when full.
  std::shared_ptr<Subscription> Subscribe();
  void Publish(v1::Event event);
  // Tells every subscriber (OnClose); later Publish calls reach nobody.
  void Close();
  size_t subscribers() const;

 private:
  // Serialises deliveries so that subscribers see sequence order.
  std::mutex delivery_;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<Subscriber>> subscribers_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_) = 1;
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_EVENT_BUS_H_
