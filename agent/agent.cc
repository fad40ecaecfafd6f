#include "agent/agent.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "agent/fd_tracker.h"
#include "absl/strings/str_cat.h"
#include "common/log_text.h"
#include "common/message_limits.h"
#include "relib/module.h"
#include "relib/v1/worker_link.pb.h"
#include "spdlog/spdlog.h"

namespace relib::agent {
namespace {

// Defaults of ModuleOptions.max_concurrent_calls and max_queued_calls
// (proto/relib/v1/relibd.proto documents them).
constexpr uint32_t kDefaultConcurrentCalls = 4;
constexpr uint32_t kDefaultQueuedCalls = 256;
// How long a host request (save_state, store_fd) waits for relibd.
constexpr std::chrono::milliseconds kHostCallTimeout{5000};
// Module log text beyond this is cut off (and counted) before it is sent.
constexpr size_t kMaxLogBytes = 64u << 10;
// Whether an idle executor thread waits on the link itself (see
// CallScheduler::SetLinkLeader): a lone call then wakes the thread that runs
// it and no other. Off: the link reader thread reads every frame and wakes
// an executor for each call.
constexpr bool kExecutorsLeadTheLink = true;

// A key as it can appear in a message: escaped, at most 64 bytes of it.
std::string ShowKey(std::string_view key) { return common::EscapeForLog(key, 64); }

ModuleOptions FromProto(const v1::ModuleOptions& proto) {
  ModuleOptions options;
  if (proto.thread_grace_ms() > 0) options.thread_grace = std::chrono::milliseconds(proto.thread_grace_ms());
  options.leaks = proto.leak_policy() == v1::LEAK_POLICY_FREE ? LeakPolicy::kFree : LeakPolicy::kReport;
  options.fds = proto.fd_policy() == v1::FD_POLICY_CLOSE ? FdPolicy::kClose : FdPolicy::kReport;
  options.mappings = proto.mapping_policy() == v1::MAPPING_POLICY_UNMAP ? MappingPolicy::kUnmap
                                                                        : MappingPolicy::kReport;
  options.signals = proto.signal_policy() == v1::SIGNAL_POLICY_REFUSE ? SignalPolicy::kRefuse : SignalPolicy::kRestore;
  options.libraries = proto.dlopen_policy() == v1::DLOPEN_POLICY_CLOSE ? DlopenPolicy::kClose : DlopenPolicy::kReport;
  options.children = proto.child_policy() == v1::CHILD_POLICY_KILL ? ChildPolicy::kKill : ChildPolicy::kReport;
  options.capture_sites = proto.capture_sites();
  options.max_concurrent_calls = proto.max_concurrent_calls();
  options.max_queued_calls = proto.max_queued_calls();
  return options;
}

void FillLoadResult(const LoadInfo& info, v1::link::LoadResult& out) {
  out.set_descriptor_name(info.descriptor_name);
  for (const auto& name : info.exports) out.add_exports(name);
  for (const auto& warning : info.warnings) out.add_warnings(warning);
  out.set_load_micros(info.load_micros);
}

void FillReport(const UnloadReport& report, v1::UnloadReport& out) {
  out.set_name(report.name);
  out.set_version(report.version);
  out.set_path(report.path);
  out.set_refused(report.refused);
  out.set_unmapped(report.unmapped);
  out.set_unmapped_proof(report.unmapped_proof);
  for (const auto& line : report.remaining_mappings) out.add_remaining_mappings(line);
  for (const auto& reason : report.pin_reasons) out.add_pin_reasons(reason);
  out.set_before_unload_error(report.before_unload_error);
  out.set_before_unload_missing(report.before_unload_missing);
  out.set_before_unload_micros(report.before_unload_micros);
  out.set_unload_micros(report.unload_micros);
  out.set_worker_pid(::getpid());
  for (const auto& thread : report.live_threads) {
    auto* t = out.add_live_threads();
    t->set_tid(thread.tid);
    t->set_name(thread.name);
    t->set_start_routine(thread.start_routine);
  }
  auto* heap = out.mutable_heap();
  heap->set_tracking_enabled(report.heap_tracking);
  heap->set_leaked_bytes(report.leaked_bytes);
  heap->set_leaked_blocks(report.leaked_blocks);
  heap->set_freed(report.leaks_freed);
  for (const auto& site : report.leak_sites) {
    auto* s = heap->add_top_sites();
    s->set_location(site.location);
    s->set_bytes(site.bytes);
    s->set_blocks(site.blocks);
  }
  auto* tls = out.mutable_tls();
  tls->set_destructors_run(report.tls_run);
  tls->set_destructors_discarded(report.tls_discarded);
  for (pid_t tid : report.tls_discarded_on) tls->add_discarded_on_threads(tid);
  for (const auto& fd : report.open_fds) {
    auto* f = out.add_open_fds();
    f->set_fd(fd.fd);
    f->set_kind(fd.kind);
    f->set_description(fd.description);
  }
  out.set_fds_closed(report.fds_closed);
  out.set_pthread_keys_deleted(report.pthread_keys_deleted);
  for (const auto& region : report.mappings) {
    auto* m = out.add_mappings();
    m->set_address(region.address);
    m->set_length(region.length);
    m->set_path(region.path);
  }
  out.set_mappings_unmapped(report.mappings_unmapped);
  for (const auto& reference : report.code_references) {
    auto* r = out.add_code_references();
    r->set_kind(reference.kind);
    r->set_description(reference.description);
    r->set_action(reference.action);
  }
  for (const auto& library : report.libraries) {
    auto* l = out.add_libraries();
    l->set_path(library.path);
    l->set_references(library.references);
  }
  out.set_libraries_closed(report.libraries_closed);
  for (const auto& child : report.children) {
    auto* c = out.add_children();
    c->set_pid(child.pid);
    c->set_command_line(child.command_line);
    c->set_parent_pid(child.parent);
  }
  out.set_children_killed(report.children_killed);
}

void SetStatus(const absl::Status& status, v1::link::Reply& reply) {
  reply.set_code(static_cast<int>(status.code()));
  reply.set_message(std::string(status.message()));
}

}  // namespace

Agent::Agent(DaemonLink& link, std::string scratch_dir, common::FlightRecorder* recorder, HostLimits limits)
    : link_(link),
      recorder_(recorder),
      limits_(limits),
      loader_(
          std::move(scratch_dir),
          [this](int level, const std::string& module, std::string_view text) { ForwardModuleLog(level, module, text); },
          this),
      reader_(link, [this](v1::link::ToWorker& command) { return Dispatch(command); }) {
  loader_.set_flight_recorder(recorder);
  if (!kExecutorsLeadTheLink) return;
  scheduler_.SetLinkLeader(
      [this](const std::function<bool()>& done) {
        switch (reader_.Lead(done)) {
          case LinkReader::LeadResult::kBusy:
            return CallScheduler::LeadOutcome::kBusy;
          case LinkReader::LeadResult::kLed:
            return CallScheduler::LeadOutcome::kLed;
          case LinkReader::LeadResult::kEnded:
            break;
        }
        return CallScheduler::LeadOutcome::kEnded;
      },
      [this] { reader_.Recall(); });
}

Agent::~Agent() {
  // The reader feeds the scheduler and the scheduler's calls wait on the
  // reader: stop the input first, then the calls, then the members go.
  link_.ShutdownReading();
  scheduler_.Shutdown();
}

CallScheduler::Limits Agent::LimitsFor(const ModuleOptions& options, bool thread_safe,
                                       std::vector<std::string>* warnings) {
  CallScheduler::Limits limits;
  uint32_t asked = options.max_concurrent_calls;
  if (thread_safe) {
    limits.concurrency = static_cast<int>(std::min<uint32_t>(asked > 0 ? asked : kDefaultConcurrentCalls, 1024));
  } else {
    limits.concurrency = 1;
    if (asked > 1 && warnings != nullptr) {
      warnings->push_back(absl::StrCat("max_concurrent_calls ", asked,
                                       " does not apply: the module does not declare itself thread-safe "
                                       "(RELIB_MODULE_FLAG_THREAD_SAFE), so it is serial: one call at a time"));
    }
  }
  limits.max_queued = options.max_queued_calls > 0 ? options.max_queued_calls : kDefaultQueuedCalls;
  return limits;
}

bool Agent::Dispatch(v1::link::ToWorker& command) {
  if (command.command_case() == v1::link::ToWorker::kUsageRequest) {
    if (absl::Status sent = SendUsage(command.id()); !sent.ok()) {
      spdlog::warn("phase=link cannot send usage: {}", sent.ToString());
    }
    return true;
  }
  if (command.command_case() != v1::link::ToWorker::kCall) {
    // The reader queues it for the control thread. Counted before the flag
    // is set: a control thread that reset the flag and then found the count
    // 0 sees the flag set (it was set after the reset), so it never sleeps
    // on the link with this command queued. Flag first, the count could be
    // looked at between the two stores and the flag reset after the first.
    {
      std::lock_guard<std::mutex> lock(read_times_mutex_);
      read_times_.push_back(std::chrono::steady_clock::now());
    }
    commands_queued_.fetch_add(1);
    if (race_hooks_ != nullptr && race_hooks_->dispatch_between_stores) race_hooks_->dispatch_between_stores();
    stop_leading_.store(true);
    return false;
  }
  stop_leading_.store(true);
  const uint64_t id = command.id();
  std::string module = command.call().name();
  CallScheduler::Job job;
  job.queue_deadline = std::chrono::milliseconds(command.call().queue_deadline_ms());
  job.run = [this, command = std::move(command)](const absl::Status& admitted) { RunCall(command, admitted); };
  if (absl::Status queued = scheduler_.Submit(module, std::move(job)); !queued.ok()) {
    v1::link::FromWorker answer;
    answer.mutable_reply()->set_id(id);
    SetStatus(queued, *answer.mutable_reply());
    SendReply(answer);
  }
  return true;
}

void Agent::RunCall(const v1::link::ToWorker& command, const absl::Status& admitted) {
  v1::link::FromWorker answer;
  v1::link::Reply& reply = *answer.mutable_reply();
  reply.set_id(command.id());
  if (!admitted.ok()) {
    SetStatus(admitted, reply);
  } else {
    const auto& call = command.call();
    int slot = recorder_ != nullptr
                   ? recorder_->BeginCall(command.id(), call.name(), call.export_name(), call.deadline_ms())
                   : -1;
    uint64_t version = 0;
    auto output = loader_.Call(call.name(), call.export_name(), call.input(), &version);
    if (recorder_ != nullptr) recorder_->EndCall(slot);
    SetStatus(output.status(), reply);
    if (output.ok()) {
      reply.mutable_call()->set_version(version);
      // The output goes on the wire from the module's buffer.
      if (absl::Status sent = link_.SendCallReply(reply, *output); !sent.ok()) {
        spdlog::warn("phase=link cannot send reply {}: {}", reply.id(), sent.ToString());
      }
      return;
    }
  }
  SendReply(answer);
}

void Agent::SendReply(const v1::link::FromWorker& answer) {
  if (absl::Status sent = link_.Send(answer); !sent.ok()) {
    // The link is gone: the reader sees it too and Run ends.
    spdlog::warn("phase=link cannot send reply {}: {}", answer.reply().id(), sent.ToString());
  }
}

void Agent::ForwardModuleLog(int level, const std::string& module, std::string_view text) {
  level = std::clamp(level, 0, 5);
  std::string cut;
  if (text.size() > kMaxLogBytes) {
    cut = absl::StrCat(absl::string_view(text.data(), kMaxLogBytes), " [... ", text.size() - kMaxLogBytes,
                       " more bytes]");
    text = cut;
  }
  v1::link::FromWorker message;
  auto* log = message.mutable_log();
  log->set_level(level);
  log->set_module(module);
  log->set_text(text.data(), text.size());
  if (!link_.Send(message).ok()) {
    spdlog::log(static_cast<spdlog::level::level_enum>(level), "module={} {}", module, common::EscapeForLog(text));
  }
}

template <typename SetId>
absl::StatusOr<uint64_t> Agent::Request(v1::link::FromWorker& message, SetId set_id, int fd) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(request_order_mutex_);
    id = reader_.Expect();
    set_id(id);
    absl::Status sent = fd >= 0 ? link_.SendWithFd(message, fd) : link_.Send(message);
    if (!sent.ok()) {
      reader_.Forget(id);
      return sent;
    }
  }
  message.Clear();  // the value's copy is not needed while waiting
  if (absl::Status answer = reader_.Await(id, kHostCallTimeout); !answer.ok()) return answer;
  return id;
}

absl::Status Agent::SaveState(const std::string& module, const std::string& key, std::string_view value) {
  const uint64_t size = key.size() + value.size();
  if (size > limits_.state_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "state store cannot take it: module '", module, "' key '", ShowKey(key), "' (", value.size(),
        " bytes) is larger than the most relibd keeps for one module, ", limits_.state_bytes,
        " bytes (relibd --state-store-mb, --max-message-mb)"));
  }
  if (size + module.size() + common::kEnvelopeBytes > limits_.frame_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "state store cannot take it: module '", module, "' key '", ShowKey(key), "' (", value.size(),
        " bytes) does not fit in a message to relibd of at most ", limits_.frame_bytes,
        " bytes (relibd --max-message-mb)"));
  }
  v1::link::FromWorker message;
  auto* save = message.mutable_save_state();
  save->set_module(module);
  save->set_key(key);
  save->set_value(value.data(), value.size());
  auto request = Request(message, [save](uint64_t id) { save->set_request_id(id); });
  if (!request.ok()) {
    return absl::Status(request.status().code(),
                        absl::StrCat("save_state of module '", module, "' key '", ShowKey(key), "' (", value.size(),
                                     " bytes): ", request.status().message()));
  }
  std::lock_guard<std::mutex> lock(resources_mutex_);
  SavedValue& slot = state_[module][key];
  if (*request > slot.request) {
    slot.bytes.assign(value.data(), value.size());
    slot.request = *request;
  }
  return absl::OkStatus();
}

std::optional<std::string> Agent::LoadState(const std::string& module, const std::string& key) {
  std::lock_guard<std::mutex> lock(resources_mutex_);
  auto m = state_.find(module);
  if (m == state_.end()) return std::nullopt;
  auto k = m->second.find(key);
  if (k == m->second.end()) return std::nullopt;
  return k->second.bytes;
}

absl::Status Agent::StoreFd(const std::string& module, const std::string& key, int fd) {
  if (key.size() + module.size() + common::kEnvelopeBytes > limits_.frame_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("store_fd of module '", module, "': a key of ", key.size(),
                                                     " bytes does not fit in a message to relibd"));
  }
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("store_fd: ", fd, " is not a file descriptor"));
  common::UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!copy.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("store_fd: fd ", fd, " cannot be duplicated"));
  fds::AdoptAsHost(copy.get());
  v1::link::FromWorker message;
  auto* store = message.mutable_store_fd();
  store->set_module(module);
  store->set_key(key);
  auto request = Request(message, [store](uint64_t id) { store->set_request_id(id); }, copy.get());
  if (!request.ok()) {
    fds::ForgetHost(copy.get());
    return absl::Status(request.status().code(), absl::StrCat("store_fd of module '", module, "' key '",
                                                              ShowKey(key), "': ", request.status().message()));
  }
  std::lock_guard<std::mutex> lock(resources_mutex_);
  StoredFd& slot = fds_[module][key];
  if (*request > slot.request) {
    if (slot.fd.valid()) fds::ForgetHost(slot.fd.get());
    slot.fd = std::move(copy);
    slot.request = *request;
  } else {
    fds::ForgetHost(copy.get());
  }
  return absl::OkStatus();
}

int Agent::TakeFd(const std::string& module, const std::string& key) {
  std::lock_guard<std::mutex> lock(resources_mutex_);
  auto m = fds_.find(module);
  if (m == fds_.end()) return -1;
  auto k = m->second.find(key);
  if (k == m->second.end() || !k->second.fd.valid()) return -1;
  return ::fcntl(k->second.fd.get(), F_DUPFD_CLOEXEC, 0);
}

absl::Status Agent::AcceptResources(const std::string& module, const v1::link::LoadCommand& command) {
  std::map<std::string, SavedValue> state;
  for (const auto& entry : command.state()) state[entry.key()].bytes = entry.value();
  std::map<std::string, StoredFd> fds;
  for (int i = 0; i < command.fd_keys_size(); ++i) {
    auto fd = link_.ReceiveFd();
    if (!fd.ok()) {
      // Each of this command's fds is one message on the channel: the rest
      // are taken off too (and dropped), or the next command's keys would
      // get them. One that fails the same way (a full fd table) is taken
      // off all the same; a closed channel ends the loop.
      for (int rest = i + 1; rest < command.fd_keys_size(); ++rest) {
        auto dropped = link_.ReceiveFd();
        if (!dropped.ok() && absl::IsUnavailable(dropped.status())) break;
      }
      return absl::Status(fd.status().code(),
                          absl::StrCat("receiving stored fd '", command.fd_keys(i), "': ", fd.status().message()));
    }
    fds::AdoptAsHost(fd->get());
    fds[command.fd_keys(i)].fd = std::move(fd).value();
  }
  bool running = loader_.IsLoaded(module);
  std::lock_guard<std::mutex> lock(resources_mutex_);
  for (auto& [key, stored] : fds_[module]) fds::ForgetHost(stored.fd.get());
  fds_[module] = std::move(fds);
  // While a version runs here, this cache is newer than relibd's snapshot
  // (the running version may have saved since the command was built).
  if (!running || state_.count(module) == 0) state_[module] = std::move(state);
  return absl::OkStatus();
}

void Agent::DropResources(const std::string& module) {
  std::lock_guard<std::mutex> lock(resources_mutex_);
  state_.erase(module);
  auto it = fds_.find(module);
  if (it == fds_.end()) return;
  for (auto& [key, stored] : it->second) fds::ForgetHost(stored.fd.get());
  fds_.erase(it);
}

absl::Status Agent::SendUsage(uint64_t request_id) {
  v1::link::FromWorker message;
  auto* usage = message.mutable_usage();
  usage->set_request_id(request_id);
  FillUsage(*usage);
  return link_.Send(message);
}

void Agent::FillUsage(v1::link::Usage& usage) {
  for (const ModuleUsage& module : loader_.Usage()) {
    auto* m = usage.add_modules();
    m->set_name(module.name);
    m->set_heap_bytes(module.heap_bytes);
    m->set_heap_blocks(module.heap_blocks);
    m->set_threads(module.threads);
    m->set_open_fds(module.open_fds);
  }
}

absl::Status Agent::Run() {
  v1::link::FromWorker hello;
  hello.mutable_hello()->set_pid(::getpid());
  hello.mutable_hello()->set_abi_version(RELIB_ABI_VERSION);
  if (absl::Status status = link_.Send(hello); !status.ok()) return status;
  // The last command's reply, sent once this thread holds the link (see
  // NextLifecycleCommand: relibd's next command, which may come as soon as
  // the reply is read, then wakes this thread alone), then the file-system
  // work that reply did not wait for.
  std::optional<v1::link::FromWorker> answer;
  std::chrono::steady_clock::time_point command_read;
  absl::Status sent;
  const std::function<absl::Status()> send_reply = [&] {
    if (!answer) return absl::OkStatus();
    answer->mutable_reply()->set_handling_micros(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - command_read)
            .count());
    sent = link_.Send(*answer);
    answer.reset();
    return sent;
  };
  const std::function<void()> after_reply = [&] {
    if (race_hooks_ != nullptr && race_hooks_->after_reply) race_hooks_->after_reply();
    loader_.FinishAfterReply();
  };
  while (true) {
    auto next = NextLifecycleCommand(send_reply, after_reply);
    if (!sent.ok()) return sent;
    if (absl::IsUnavailable(next.status())) return absl::OkStatus();  // relibd closed the link
    if (!next.ok()) return next.status();
    const v1::link::ToWorker& command = *next;
    command_read = read_time_;
    answer.emplace();
    v1::link::Reply& reply = *answer->mutable_reply();
    reply.set_id(command.id());
    Execute(command, reply);
    if (recorder_ != nullptr) recorder_->LeaveToIdle();
    // The usage rides with the reply and relibd applies it first: a client
    // that sees the reply then asks for Status finds it current.
    FillUsage(*reply.mutable_usage());
  }
}

absl::StatusOr<v1::link::ToWorker> Agent::NextLifecycleCommand(const std::function<absl::Status()>& send_reply,
                                                               const std::function<void()>& after_reply) {
  bool replied = false;
  absl::Status sent;
  auto reply_once = [&] {
    if (replied) return;
    replied = true;
    sent = send_reply();
  };
  // Reset before the count is looked at: a command counted after the look
  // sets the flag after this reset (Dispatch counts first), so neither Lead
  // below can sleep past it (the flag is not reset between them).
  if (race_hooks_ != nullptr && race_hooks_->before_reset) race_hooks_->before_reset();
  stop_leading_.store(false);
  if (commands_queued_.load() == 0) {
    if (race_hooks_ != nullptr && race_hooks_->before_lead) race_hooks_->before_lead();
    // Nothing queued: the reply goes out with the link held, so that
    // relibd's next command, which may come as soon as the reply is read,
    // waits for this thread (it then wakes this thread alone, not the
    // reader thread and then this one). The token is let go for the file
    // work after the reply: calls of other modules and relibd's answers to
    // host requests are read meanwhile (by the reader thread). Then this
    // thread waits on the link again. Busy: another thread reads and queues
    // what comes, as below.
    if (reader_.Lead([&] {
          reply_once();
          return true;
        }) == LinkReader::LeadResult::kLed &&
        sent.ok()) {
      after_reply();
      if (commands_queued_.load() == 0) reader_.Lead([&] { return stop_leading_.load(); });
      return NextQueuedCommand();
    }
  }
  reply_once();
  // The reply was not sent (the link is gone, or the reply is over the frame
  // limit): relibd, still waiting for it, sends no next command.
  if (!sent.ok()) return sent;
  after_reply();
  return NextQueuedCommand();
}

absl::StatusOr<v1::link::ToWorker> Agent::NextQueuedCommand() {
  // Never a timed wait for an empty queue: a wait of 0 ms still slept the
  // timer slack (~50 µs) in the kernel. No timeout to speak of: an idle
  // worker does not wake up.
  auto next = reader_.NextCommand(std::chrono::hours(24));
  while (next.ok() && !next->has_value()) next = reader_.NextCommand(std::chrono::hours(24));
  if (!next.ok()) return next.status();
  commands_queued_.fetch_sub(1);
  {
    std::lock_guard<std::mutex> lock(read_times_mutex_);
    read_time_ = read_times_.empty() ? std::chrono::steady_clock::now() : read_times_.front();
    if (!read_times_.empty()) read_times_.pop_front();
  }
  return std::move(**next);
}

void Agent::Execute(const v1::link::ToWorker& command, v1::link::Reply& reply) {
  switch (command.command_case()) {
    case v1::link::ToWorker::kLoad: {
      const auto& load = command.load();
      if (absl::Status accepted = AcceptResources(load.name(), load); !accepted.ok()) {
        SetStatus(accepted, reply);
        return;
      }
      ModuleOptions options = FromProto(load.options());
      auto info = loader_.Load(load.name(), load.path(), load.version(), options, load.display_path(),
                               load.placed_in_scratch());
      SetStatus(info.status(), reply);
      if (info.ok()) {
        scheduler_.Configure(load.name(), LimitsFor(options, info->thread_safe, &info->warnings));
        FillLoadResult(*info, *reply.mutable_load());
      }
      return;
    }
    case v1::link::ToWorker::kUnload: {
      const auto& unload = command.unload();
      UnloadReport report;
      // In-flight calls finish first; new ones wait, and run on the module
      // again if it stays loaded.
      scheduler_.Hold(unload.name());
      absl::Status status = loader_.Unload(unload.name(), unload.force(), report);
      if (status.ok() || !loader_.IsLoaded(unload.name())) {
        scheduler_.Remove(unload.name(), absl::NotFoundError(absl::StrCat("module '", unload.name(),
                                                                          "' was unloaded before the call ran")));
      } else {
        scheduler_.Release(unload.name());
      }
      SetStatus(status, reply);
      if (!report.name.empty()) FillReport(report, *reply.mutable_unload());
      if (status.ok()) DropResources(unload.name());
      return;
    }
    case v1::link::ToWorker::kReload: {
      const auto& load = command.reload().load();
      if (absl::Status accepted = AcceptResources(load.name(), load); !accepted.ok()) {
        SetStatus(accepted, reply);
        // Nothing was changed: the running version goes on serving.
        reply.mutable_reload()->set_old_version_loaded(loader_.IsLoaded(load.name()));
        return;
      }
      UnloadReport report;
      ModuleOptions options = FromProto(load.options());
      // The swap: once the new version is open, calls of the module are
      // held (they queue), the running ones finish, the versions change,
      // and the held calls go to whichever version is loaded then.
      bool held = false;
      auto hold_start = std::chrono::steady_clock::now();
      auto hold = [&] {
        hold_start = std::chrono::steady_clock::now();
        scheduler_.Hold(load.name());
        held = true;
      };
      auto info = loader_.Reload(load.name(), load.path(), load.version(), command.reload().force(), &options, report,
                                 load.display_path(), hold, load.placed_in_scratch());
      auto* result = reply.mutable_reload();
      if (info.ok()) {
        scheduler_.Configure(load.name(), LimitsFor(options, info->thread_safe, &info->warnings));
      }
      if (held) {
        if (loader_.IsLoaded(load.name())) {
          scheduler_.Release(load.name());
        } else {
          scheduler_.Remove(load.name(), absl::UnavailableError(absl::StrCat(
                                             "module '", load.name(), "' is gone: its reload failed (",
                                             info.status().message(), ")")));
        }
        result->set_swap_pause_micros(std::chrono::duration_cast<std::chrono::microseconds>(
                                          std::chrono::steady_clock::now() - hold_start)
                                          .count());
      }
      SetStatus(info.status(), reply);
      if (!report.name.empty()) FillReport(report, *result->mutable_report());
      if (info.ok()) {
        FillLoadResult(*info, *result->mutable_load());
      } else {
        result->set_old_version_loaded(loader_.IsLoaded(load.name()));
      }
      return;
    }
    case v1::link::ToWorker::kCall:            // taken by Dispatch, never queued
    case v1::link::ToWorker::kUsageRequest:    // answered by Dispatch
    case v1::link::ToWorker::kHostCallResult:  // handled by the reader, never queued
    case v1::link::ToWorker::COMMAND_NOT_SET:
      break;
  }
  SetStatus(absl::InvalidArgumentError("worker received an empty or unknown command"), reply);
}

}  // namespace relib::agent
