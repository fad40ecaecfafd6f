#include "daemon/rpc_service.h"

#include "absl/strings/str_cat.h"
#include "common/api_metadata.h"
#include "daemon/report_metadata.h"
#include "relib/module.h"

namespace relib::daemon {
namespace {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), CapStatusMessage(std::string(status.message())));
}

// A refused or partial unload still has a report: it travels as binary
// trailing metadata next to the error status, cut to what fits.
void AttachReport(grpc::ServerContext* context, const v1::UnloadReport& report) {
  if (report.name().empty()) return;
  context->AddTrailingMetadata(std::string(common::kUnloadReportMetadataKey), EncodeReportForMetadata(report));
}

}  // namespace

grpc::Status RpcService::Require(grpc::ServerContextBase* context, Role needed) const {
  if (granted_ >= needed) return grpc::Status::OK;
  long uid = peers_ && context ? peers_->UidOf(context->peer()) : -1;
  std::string message = AccessPolicy::DeniedMessage(static_cast<uid_t>(uid), needed);
  if (uid < 0) message = absl::StrCat("permission denied (the caller lacks the ", RoleName(needed), " role)");
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, message);
}

grpc::Status RpcService::Load(grpc::ServerContext* context, const v1::LoadRequest* request,
                              v1::LoadResponse* response) {
  if (grpc::Status denied = Require(context, Role::kControl); !denied.ok()) return denied;
  auto info = supervisor_.Load(request->name(), request->path(), request->options(), request->worker());
  if (!info.ok()) return ToGrpc(info.status());
  if (request->watch()) {
    info = supervisor_.SetWatch(request->name(), true);
    if (!info.ok()) return ToGrpc(info.status());
  }
  *response->mutable_module() = std::move(info).value();
  return grpc::Status::OK;
}

grpc::Status RpcService::Reload(grpc::ServerContext* context, const v1::ReloadRequest* request,
                                v1::ReloadResponse* response) {
  if (grpc::Status denied = Require(context, Role::kControl); !denied.ok()) return denied;
  v1::UnloadReport failure_report;
  auto result = supervisor_.Reload(request->name(), request->path(), request->force(),
                                   request->has_options() ? &request->options() : nullptr, request->staged(),
                                   &failure_report);
  if (!result.ok()) {
    AttachReport(context, failure_report);
    return ToGrpc(result.status());
  }
  *response = std::move(result).value();
  return grpc::Status::OK;
}

grpc::Status RpcService::Unload(grpc::ServerContext* context, const v1::UnloadRequest* request,
                                v1::UnloadResponse* response) {
  if (grpc::Status denied = Require(context, Role::kControl); !denied.ok()) return denied;
  v1::UnloadReport failure_report;
  auto report = supervisor_.Unload(request->name(), request->force(), &failure_report);
  if (!report.ok()) {
    AttachReport(context, failure_report);
    return ToGrpc(report.status());
  }
  *response->mutable_report() = std::move(report).value();
  return grpc::Status::OK;
}

grpc::Status RpcService::Call(grpc::ServerContext* context, const v1::CallRequest* request,
                              v1::CallResponse* response) {
  if (grpc::Status denied = Require(context, Role::kControl); !denied.ok()) return denied;
  auto result = supervisor_.Call(request->name(), request->export_name(), request->input());
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(result).value();
  return grpc::Status::OK;
}

grpc::Status RpcService::Status(grpc::ServerContext* context, const v1::StatusRequest* request,
                                v1::StatusResponse* response) {
  if (grpc::Status denied = Require(context, Role::kView); !denied.ok()) return denied;
  *response = supervisor_.Status(request->with_reports());
  response->set_daemon_version(RELIB_VERSION);
  response->set_abi_version(RELIB_ABI_VERSION);
  return grpc::Status::OK;
}

grpc::Status RpcService::Watch(grpc::ServerContext* context, const v1::WatchRequest* request,
                               v1::WatchResponse* response) {
  if (grpc::Status denied = Require(context, Role::kControl); !denied.ok()) return denied;
  auto info = supervisor_.SetWatch(request->name(), !request->off());
  if (!info.ok()) return ToGrpc(info.status());
  *response->mutable_module() = std::move(info).value();
  return grpc::Status::OK;
}

grpc::Status RpcService::ReloadConfig(grpc::ServerContext* context, const v1::ReloadConfigRequest*,
                                      v1::ReloadConfigResponse* response) {
  if (grpc::Status denied = Require(context, Role::kControl); !denied.ok()) return denied;
  if (!config_reloader_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "relibd was started without --config: there is no config file to reload");
  }
  auto result = config_reloader_();
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(result).value();
  return grpc::Status::OK;
}

}  // namespace relib::daemon
