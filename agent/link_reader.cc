#include "agent/link_reader.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace relib::agent {

LinkReader::LinkReader(DaemonLink& link, Dispatcher dispatch)
    : link_(link), dispatch_(std::move(dispatch)), thread_([this] { Loop(); }) {}

LinkReader::~LinkReader() {
  link_.ShutdownReading();
  thread_.join();
}

void LinkReader::Loop() {
  while (true) {
    v1::link::ToWorker frame;
    absl::Status received = link_.Receive(&frame);
    if (received.ok() && frame.command_case() != v1::link::ToWorker::kHostCallResult && dispatch_ &&
        dispatch_(frame)) {
      continue;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (!received.ok()) {
      ended_ = received;
      // Nobody will answer now: waiting requests fail at once.
      for (auto& [id, answer] : answers_) {
        if (!answer) answer = absl::UnavailableError(absl::StrCat("the link to relibd ended: ", received.message()));
      }
      changed_.notify_all();
      return;
    }
    if (frame.command_case() == v1::link::ToWorker::kHostCallResult) {
      const auto& result = frame.host_call_result();
      auto it = answers_.find(result.request_id());
      // An id nobody waits for any more: its caller timed out.
      if (it != answers_.end()) {
        it->second = absl::Status(static_cast<absl::StatusCode>(result.code()), result.message());
      } else {
        spdlog::warn("phase=link relibd answered host request {} after its caller gave up: {}",
                     result.request_id(), result.message());
      }
    } else {
      commands_.push_back(std::move(frame));
    }
    changed_.notify_all();
  }
}

absl::StatusOr<std::optional<v1::link::ToWorker>> LinkReader::NextCommand(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !commands_.empty() || ended_.has_value(); });
  if (!commands_.empty()) {
    v1::link::ToWorker command = std::move(commands_.front());
    commands_.pop_front();
    return command;
  }
  if (ended_) return *ended_;
  return std::nullopt;
}

uint64_t LinkReader::Expect() {
  std::lock_guard<std::mutex> lock(mutex_);
  uint64_t id = next_id_++;
  std::optional<absl::Status> answer;
  if (ended_) answer = absl::UnavailableError(absl::StrCat("the link to relibd ended: ", ended_->message()));
  answers_.emplace(id, std::move(answer));
  return id;
}

absl::Status LinkReader::Await(uint64_t id, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = answers_.find(id);
  if (it == answers_.end()) return absl::InternalError(absl::StrCat("no host request ", id, " is waiting"));
  bool answered = changed_.wait_for(lock, timeout, [&] { return it->second.has_value(); });
  absl::Status status = answered ? *it->second
                                 : absl::DeadlineExceededError(absl::StrCat(
                                       "relibd did not answer within ", timeout.count(), " ms"));
  answers_.erase(it);
  return status;
}

void LinkReader::Forget(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  answers_.erase(id);
}

}  // namespace relib::agent
