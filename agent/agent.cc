#include "agent/agent.h"

#include <unistd.h>

#include "relib/module.h"
#include "relib/v1/worker_link.pb.h"
#include "spdlog/spdlog.h"

namespace relib::agent {
namespace {

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
  out.set_unmapped(report.unmapped);
  for (const auto& line : report.remaining_mappings) out.add_remaining_mappings(line);
  out.set_before_unload_error(report.before_unload_error);
  out.set_before_unload_missing(report.before_unload_missing);
  out.set_before_unload_micros(report.before_unload_micros);
  out.set_unload_micros(report.unload_micros);
  out.set_worker_pid(::getpid());
}

void SetStatus(const absl::Status& status, v1::link::Reply& reply) {
  reply.set_code(static_cast<int>(status.code()));
  reply.set_message(std::string(status.message()));
}

}  // namespace

Agent::Agent(DaemonLink& link, std::string scratch_dir)
    : link_(link),
      loader_(std::move(scratch_dir), [this](int level, const std::string& module, std::string_view text) {
        ForwardModuleLog(level, module, text);
      }) {}

void Agent::ForwardModuleLog(int level, const std::string& module, std::string_view text) {
  v1::link::FromWorker message;
  auto* log = message.mutable_log();
  log->set_level(level);
  log->set_module(module);
  log->set_text(std::string(text));
  if (!link_.Send(message).ok()) {
    spdlog::log(static_cast<spdlog::level::level_enum>(level), "module={} {}", module, text);
  }
}

absl::Status Agent::Run() {
  v1::link::FromWorker hello;
  hello.mutable_hello()->set_pid(::getpid());
  hello.mutable_hello()->set_abi_version(RELIB_ABI_VERSION);
  if (absl::Status status = link_.Send(hello); !status.ok()) return status;
  while (true) {
    v1::link::ToWorker command;
    absl::Status received = link_.Receive(&command);
    if (absl::IsUnavailable(received)) return absl::OkStatus();
    if (!received.ok()) return received;
    v1::link::FromWorker answer;
    v1::link::Reply& reply = *answer.mutable_reply();
    reply.set_id(command.id());
    Execute(command, reply);
    if (absl::Status status = link_.Send(answer); !status.ok()) return status;
  }
}

void Agent::Execute(const v1::link::ToWorker& command, v1::link::Reply& reply) {
  switch (command.command_case()) {
    case v1::link::ToWorker::kLoad: {
      const auto& load = command.load();
      auto info = loader_.Load(load.name(), load.path(), load.version());
      SetStatus(info.status(), reply);
      if (info.ok()) FillLoadResult(*info, *reply.mutable_load());
      return;
    }
    case v1::link::ToWorker::kUnload: {
      const auto& unload = command.unload();
      auto report = loader_.Unload(unload.name(), unload.force());
      SetStatus(report.status(), reply);
      if (report.ok()) FillReport(*report, *reply.mutable_unload());
      return;
    }
    case v1::link::ToWorker::kReload: {
      const auto& reload = command.reload();
      UnloadReport report;
      bool unloaded = false;
      auto outcome = loader_.Reload(reload.name(), reload.path(), reload.version(), reload.force(), &report);
      unloaded = !report.name.empty();
      SetStatus(outcome.status(), reply);
      auto* result = reply.mutable_reload();
      if (unloaded) FillReport(report, *result->mutable_report());
      if (outcome.ok()) {
        FillLoadResult(outcome->load, *result->mutable_load());
      } else if (unloaded) {
        result->set_rolled_back(loader_.IsLoaded(reload.name()));
      }
      return;
    }
    case v1::link::ToWorker::kCall: {
      const auto& call = command.call();
      auto output = loader_.Call(call.name(), call.export_name(), call.input());
      SetStatus(output.status(), reply);
      if (output.ok()) reply.mutable_call()->set_output(std::move(output).value());
      return;
    }
    case v1::link::ToWorker::COMMAND_NOT_SET:
      break;
  }
  SetStatus(absl::InvalidArgumentError("worker received an empty or unknown command"), reply);
}

}  // namespace relib::agent
