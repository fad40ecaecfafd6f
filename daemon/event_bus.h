// Fan-out of lifecycle events to every Events stream subscriber.
#ifndef RELIB_DAEMON_EVENT_BUS_H_
#define RELIB_DAEMON_EVENT_BUS_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// Thread-safe. Events get a sequence number and a timestamp at Publish.
class EventBus {
 public:
  // A subscriber's queue. A subscriber that falls more than kMaxQueued events
  // behind loses the oldest ones (the stream must never block the daemon).
  class Subscription {
   public:
    ~Subscription();
    // Waits up to `timeout` for the next event. Returns false on timeout or
    // when the bus is closed and the queue drained.
    bool Next(v1::Event* event, std::chrono::milliseconds timeout);
    bool closed() const;

   private:
    friend class EventBus;
    explicit Subscription(EventBus& bus) : bus_(bus) {}
    EventBus& bus_;
    std::deque<v1::Event> queue_;  // guarded by bus_.mutex_
  };

  static constexpr size_t kMaxQueued = 10000;

  std::unique_ptr<Subscription> Subscribe();
  void Publish(v1::Event event);
  // Wakes every subscriber; Next returns false once its queue is empty.
  void Close();

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::list<Subscription*> subscribers_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_) = 1;
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_EVENT_BUS_H_
