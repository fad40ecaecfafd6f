#include "daemon/recovery.h"

#include <algorithm>

namespace relib::daemon {

std::vector<std::string> Recovery::Charged(const std::vector<std::string>& modules, const std::string& blamed,
                                           bool worker_was_ready) {
  if (!worker_was_ready) return {};
  if (blamed.empty()) return modules;
  if (std::find(modules.begin(), modules.end(), blamed) != modules.end()) return {blamed};
  return {};
}

int Recovery::AddCrash(const std::string& module, Clock::time_point now) {
  auto& history = crashes_[module];
  history.push_back(now);
  while (!history.empty() && now - history.front() > policy_.window) history.pop_front();
  return static_cast<int>(history.size());
}

void Recovery::Forget(const std::string& module) { crashes_.erase(module); }

void Recovery::RestartBegins(const std::string& group, Clock::time_point now) {
  GroupState& state = groups_[group];
  state.restarted = true;
  state.restart_began = now;
}

std::chrono::milliseconds Recovery::BackoffAfterDeath(const std::string& group, Clock::time_point now) {
  GroupState& state = groups_[group];
  if (state.restarted && now - state.restart_began < policy_.stable_after) {
    ++state.failed_restarts;
  } else {
    state.failed_restarts = 0;
  }
  state.restarted = false;
  // A first death restarts at once: waiting only delays serving again. Only
  // a worker dying again soon after its restart waits, and the wait doubles.
  if (state.failed_restarts == 0) return std::chrono::milliseconds(0);
  auto delay = policy_.backoff_initial * (int64_t{1} << std::min(state.failed_restarts, 16));
  return std::min(policy_.backoff_max, delay);
}

bool Recovery::StartFailed(const std::string& group) {
  ++failed_starts_;
  ++failed_starts_of_group_[group];
  return failed_starts(group) >= policy_.max_failed_starts;
}

void Recovery::WorkerReady(const std::string& group) {
  failed_starts_ = 0;
  failed_starts_of_group_.erase(group);
}

int Recovery::failed_starts(const std::string& group) const {
  auto it = failed_starts_of_group_.find(group);
  return std::max(failed_starts_, it == failed_starts_of_group_.end() ? 0 : it->second);
}

}  // namespace relib::daemon
