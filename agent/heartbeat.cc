#include "agent/heartbeat.h"

#include <chrono>

namespace relib::agent {

Heartbeat::Heartbeat(common::FlightRecord* record) {
  thread_ = std::thread([this, record] {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      record->heartbeat.fetch_add(1, std::memory_order_relaxed);
      wakeup_.wait_for(lock, std::chrono::milliseconds(10));
    }
  });
}

Heartbeat::~Heartbeat() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wakeup_.notify_all();
  thread_.join();
}

}  // namespace relib::agent
