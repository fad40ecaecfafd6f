#include "agent/heartbeat.h"

#include <chrono>

namespace relib::agent {

Heartbeat::Heartbeat(common::FlightRecord* record) {
  thread_ = std::thread([this, record] {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      record->heartbeat.fetch_add(1, std::memory_order_relaxed);
      // Fast only while something runs that relibd may have to judge (a
      // control phase or a call); an idle worker wakes once a second.
      bool busy = record->phase.load(std::memory_order_relaxed) != 0 ||
                  record->calls_in_flight.load(std::memory_order_relaxed) > 0;
      wakeup_.wait_for(lock, busy ? std::chrono::milliseconds(10) : std::chrono::milliseconds(1000));
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
