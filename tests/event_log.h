// Test helper: collects relibd's Events stream in the background.
#ifndef RELIB_TESTS_EVENT_LOG_H_
#define RELIB_TESTS_EVENT_LOG_H_

#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "relib/v1/relibd.grpc.pb.h"

namespace relib::testing {

// Subscribes on construction (returns once the stream is open, so no later
// event is missed); stops on destruction. Thread-safe.
class EventLog {
 public:
  explicit EventLog(v1::Relibd::Stub& stub) {
    reader_ = stub.Events(&context_, v1::EventsRequest());
    reader_->WaitForInitialMetadata();
    thread_ = std::thread([this] {
      v1::Event event;
      while (reader_->Read(&event)) {
        std::lock_guard<std::mutex> lock(mutex_);
        events_.push_back(event);
      }
    });
  }
  ~EventLog() {
    context_.TryCancel();
    thread_.join();
  }
  std::vector<v1::Event> Events() {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }
  // Index of the first event at or after `from` matching `match`, or -1.
  int Find(const std::function<bool(const v1::Event&)>& match, int from = 0) {
    auto events = Events();
    for (int i = from; i < static_cast<int>(events.size()); ++i) {
      if (match(events[i])) return i;
    }
    return -1;
  }
  // The events matching `match`, in order.
  std::vector<v1::Event> All(const std::function<bool(const v1::Event&)>& match) {
    std::vector<v1::Event> found;
    for (const v1::Event& event : Events()) {
      if (match(event)) found.push_back(event);
    }
    return found;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader_;
  std::mutex mutex_;
  std::vector<v1::Event> events_;
  std::thread thread_;
};

}  // namespace relib::testing

#endif  // RELIB_TESTS_EVENT_LOG_H_
