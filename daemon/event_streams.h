// relib.v1.Relibd/Events served through gRPC's asynchronous API on one
// server's completion queue, driven by one thread that sleeps until gRPC has
// something for it: no thread per stream, and none of the callback API's
// threads (gRPC 1.51 polls its callback queue with two threads that wake
// every second or so, even with no stream open).
#ifndef RELIB_DAEMON_EVENT_STREAMS_H_
#define RELIB_DAEMON_EVENT_STREAMS_H_

#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "daemon/event_bus.h"
#include "grpcpp/grpcpp.h"
#include "relib/v1/relibd.grpc.pb.h"

namespace relib::daemon {

class EventStreams {
 public:
  // Asks `service` (registered with the server `queue` belongs to) for Events
  // calls and serves each from `bus`. `admit` decides whether the caller may
  // follow events (a non-OK status ends the stream with it). A stream more
  // than `max_backlog` events behind is ended with RESOURCE_EXHAUSTED; more
  // than EventBus::kMaxSubscribers at once are refused with it.
  // REQUIRES: the server has started; `service` and `bus` outlive this.
  EventStreams(v1::Relibd::WithAsyncMethod_Events<v1::Relibd::Service>& service, EventBus& bus,
               std::unique_ptr<grpc::ServerCompletionQueue> queue,
               std::function<grpc::Status(grpc::ServerContext*)> admit, size_t max_backlog);
  // Shuts the queue down and waits for its thread. REQUIRES: the server was
  // shut down first (gRPC's rule for completion queues).
  ~EventStreams();
  EventStreams(const EventStreams&) = delete;
  EventStreams& operator=(const EventStreams&) = delete;

  // One stream; defined in event_streams.cc.
  class Stream;

 private:
  void Run();

  v1::Relibd::WithAsyncMethod_Events<v1::Relibd::Service>& service_;
  EventBus& bus_;
  std::unique_ptr<grpc::ServerCompletionQueue> queue_;
  const std::function<grpc::Status(grpc::ServerContext*)> admit_;
  const size_t max_backlog_;
  // Held while an operation starts; shut_down_ set once the queue's Shutdown
  // may begin (then nothing is started on it any more).
  std::mutex request_mutex_;
  bool shut_down_ = false;
  std::thread thread_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_EVENT_STREAMS_H_
