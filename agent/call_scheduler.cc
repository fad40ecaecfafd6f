#include "agent/call_scheduler.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/alt_stack.h"
#include "agent/module_context.h"
#include "agent/tls_tracker.h"

namespace relib::agent {

thread_local CallScheduler::Leading* CallScheduler::leading_ = nullptr;

CallScheduler::~CallScheduler() { Shutdown(); }

void CallScheduler::SetLinkLeader(LeadFn lead, std::function<void()> recall) {
  std::lock_guard<std::mutex> lock(mutex_);
  lead_ = std::move(lead);
  recall_ = std::move(recall);
}

void CallScheduler::RecallLocked(Gate& gate) {
  if (!gate.leading) return;
  gate.recall = true;
  if (recall_) recall_();
}

void CallScheduler::Shutdown() {
  std::unique_lock<std::mutex> lock(mutex_);
  shut_down_ = true;
  auto gates = std::move(gates_);
  gates_.clear();
  std::vector<Queued> dropped;
  for (auto& [name, gate] : gates) {
    gate->held = true;
    Drain(lock, gate);
    for (auto& queued : gate->queue) dropped.push_back(std::move(queued));
    gate->queue.clear();
  }
  lock.unlock();
  for (auto& queued : dropped) queued.job.run(absl::UnavailableError("the worker is shutting down"));
}

void CallScheduler::Configure(const std::string& module, Limits limits) {
  limits.concurrency = std::max(1, limits.concurrency);
  std::unique_lock<std::mutex> lock(mutex_);
  if (shut_down_) return;
  auto& gate = gates_[module];
  if (!gate) {
    gate = std::make_shared<Gate>();
    gate->name = module;
  }
  gate->limits = limits;
  std::shared_ptr<Gate> woken = gate;
  int count = Dispatch(woken);
  lock.unlock();
  Wake(*woken, count);
}

void CallScheduler::Remove(const std::string& module, const absl::Status& why) {
  std::deque<Queued> dropped;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    auto it = gates_.find(module);
    if (it == gates_.end()) return;
    std::shared_ptr<Gate> gate = it->second;
    gates_.erase(it);
    gate->held = true;
    Drain(lock, gate);  // normally nothing left: Hold came first
    dropped = std::move(gate->queue);
    gate->queue.clear();
  }
  for (auto& queued : dropped) queued.job.run(why);
}

absl::Status CallScheduler::Submit(const std::string& module, Job job) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (shut_down_) return absl::UnavailableError("the worker is shutting down");
  auto it = gates_.find(module);
  if (it == gates_.end()) return absl::NotFoundError(absl::StrCat("module '", module, "' is not loaded"));
  std::shared_ptr<Gate> gate = it->second;
  const size_t free_slots = gate->held ? 0 : static_cast<size_t>(std::max(0, gate->limits.concurrency - gate->running));
  if (gate->queue.size() >= gate->limits.max_queued + free_slots) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "module '", module, "' has ", gate->queue.size() - std::min(gate->queue.size(), free_slots),
        " calls queued, its limit (max_queued_calls ", gate->limits.max_queued, ", ", gate->running,
        " running of max_concurrent_calls ", gate->limits.concurrency, "); try again later"));
  }
  if (leading_ != nullptr && leading_->gate == gate.get() && !leading_->taken && !gate->held && !gate->stopping &&
      gate->queue.empty() && gate->running < gate->limits.concurrency) {
    // Read by an idle thread of this very module: it runs the call itself
    // once it let go of the link (no other thread is woken).
    ++gate->running;
    leading_->taken = Queued{std::move(job), std::chrono::steady_clock::now()};
    return absl::OkStatus();
  }
  gate->queue.push_back(Queued{std::move(job), std::chrono::steady_clock::now()});
  int count = Dispatch(gate);
  lock.unlock();
  Wake(*gate, count);
  return absl::OkStatus();
}

void CallScheduler::Wake(Gate& gate, int count) {
  for (; count > 0; --count) gate.work.notify_one();
}

int CallScheduler::Dispatch(const std::shared_ptr<Gate>& gate) {
  if (gate->held) return 0;
  int startable = std::min<int>(static_cast<int>(gate->queue.size()), gate->limits.concurrency - gate->running);
  int need = startable - gate->wakeups - gate->starting;
  int wake = 0;
  for (; need > 0; --need) {
    if (gate->idle - gate->wakeups > 0) {
      ++gate->wakeups;
      ++wake;
    } else if (static_cast<int>(gate->threads.size()) < gate->limits.concurrency) {
      // Executor threads are the host's: created outside any module scope.
      HostScope host;
      ++gate->starting;
      gate->threads.emplace_back(&CallScheduler::ThreadLoop, this, gate);
    } else {
      // Every thread is busy, or the idle one reads the link: that one
      // comes back for it; else the next free one takes it.
      RecallLocked(*gate);
      break;
    }
  }
  return wake;
}

void CallScheduler::ThreadLoop(std::shared_ptr<Gate> gate) {
  // Module code runs here: the crash handler needs a stack even when a
  // module overflows this one.
  ScopedAltStack alt_stack;
  std::string name = ("relib:" + gate->name).substr(0, 15);
  ::pthread_setname_np(::pthread_self(), name.c_str());
  std::unique_lock<std::mutex> lock(mutex_);
  --gate->starting;
  while (true) {
    std::optional<Queued> taken;
    bool may_lead = true;
    while (!CanStart(*gate) && !gate->stopping) {
      if (may_lead && lead_ && !lead_ended_ && !link_led_ && !gate->held) {
        // Wait on the link itself: a call for this module then runs here
        // without a hand-off from the reader thread.
        link_led_ = true;
        gate->leading = true;
        gate->recall = false;
        Leading leading{gate.get(), std::nullopt};
        leading_ = &leading;
        const LeadFn& lead = lead_;  // set once, before any executor exists
        lock.unlock();
        LeadOutcome outcome = lead([&] { return leading.taken.has_value() || gate->recall.load(); });
        lock.lock();
        leading_ = nullptr;
        gate->leading = false;
        link_led_ = false;
        if (outcome == LeadOutcome::kEnded) lead_ended_ = true;
        if (leading.taken) {
          taken = std::move(leading.taken);
          break;
        }
        // Somebody else read (or nobody can): sleep until work comes. The
        // gate is looked at again first (it may have changed meanwhile).
        if (outcome != LeadOutcome::kLed) may_lead = false;
        continue;
      }
      ++gate->idle;
      gate->work.wait(lock);
      --gate->idle;
      if (gate->wakeups > 0) --gate->wakeups;
      may_lead = true;
    }
    Queued queued;
    if (taken) {
      queued = std::move(*taken);  // counted in running by Submit
    } else {
      if (!CanStart(*gate)) break;  // stopping
      queued = std::move(gate->queue.front());
      gate->queue.pop_front();
      ++gate->running;
    }
    auto waited = std::chrono::steady_clock::now() - queued.since;
    absl::Status admitted;
    if (queued.job.queue_deadline.count() > 0 && waited > queued.job.queue_deadline) {
      admitted = absl::DeadlineExceededError(absl::StrCat(
          "call waited ", std::chrono::duration_cast<std::chrono::milliseconds>(waited).count(),
          " ms in the queue of module '", gate->name, "' (", gate->limits.concurrency,
          " calls at a time), longer than its queue deadline of ", queued.job.queue_deadline.count(),
          " ms; it did not run"));
    }
    lock.unlock();
    queued.job.run(admitted);
    queued.job.run = nullptr;  // whatever the job holds goes outside the lock
    lock.lock();
    --gate->running;
    if (gate->running == 0) gate->drained.notify_all();
  }
  lock.unlock();
  // The module is still loaded (Hold waits for this thread): its
  // thread_local destructors run now, counted in its unload report.
  tls::RunOnThisThread();
}

void CallScheduler::Drain(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Gate>& gate) {
  gate->drained.wait(lock, [&] { return gate->running == 0; });
  gate->stopping = true;
  gate->work.notify_all();
  RecallLocked(*gate);
  std::vector<std::thread> threads = std::move(gate->threads);
  gate->threads.clear();
  lock.unlock();
  for (std::thread& thread : threads) thread.join();
  lock.lock();
  gate->stopping = false;
  gate->wakeups = 0;
}

void CallScheduler::Hold(const std::string& module) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = gates_.find(module);
  if (it == gates_.end()) return;
  std::shared_ptr<Gate> gate = it->second;
  gate->held = true;
  Drain(lock, gate);
}

void CallScheduler::Release(const std::string& module) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = gates_.find(module);
  if (it == gates_.end()) return;
  std::shared_ptr<Gate> gate = it->second;
  gate->held = false;
  auto now = std::chrono::steady_clock::now();
  for (Queued& queued : gate->queue) queued.since = now;
  int count = Dispatch(gate);
  lock.unlock();
  Wake(*gate, count);
}

}  // namespace relib::agent
