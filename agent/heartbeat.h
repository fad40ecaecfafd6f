// The worker's heartbeat: a thread advancing the flight recorder's counter
// every 10 ms while the worker is busy (once a second while idle), so relibd can tell "alive and scheduled" from "frozen".
#ifndef RELIB_AGENT_HEARTBEAT_H_
#define RELIB_AGENT_HEARTBEAT_H_

#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "common/flight_recorder.h"

namespace relib::agent {

// Beats from construction until destruction; the destructor stops and joins
// the thread, so after it returns nothing writes to `record` any more.
// REQUIRES: `record` stays mapped until the destructor has returned.
class Heartbeat {
 public:
  explicit Heartbeat(common::FlightRecord* record);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable wakeup_;
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_HEARTBEAT_H_
