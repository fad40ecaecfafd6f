// The relib.v1.Relibd gRPC service: translates requests to Supervisor calls
// and absl::Status to grpc::Status. No logic of its own.
#ifndef RELIB_DAEMON_RPC_SERVICE_H_
#define RELIB_DAEMON_RPC_SERVICE_H_

#include <atomic>
#include <functional>

#include "daemon/access.h"
#include "daemon/event_bus.h"
#include "daemon/supervisor.h"
#include "relib/v1/relibd.grpc.pb.h"

namespace relib::daemon {

// Events uses gRPC's asynchronous API (no thread per stream, served by
// EventStreams, see daemon/event_streams.h); the other methods are
// synchronous.
class RpcService final : public v1::Relibd::WithAsyncMethod_Events<v1::Relibd::Service> {
 public:
  // `granted`: the role of every connection this instance serves (one
  // instance per role, see PeerListener); calls needing more are answered
  // PERMISSION_DENIED naming the caller's uid, looked up in `peers` if given.
  RpcService(Supervisor& supervisor, EventBus& events, Role granted = Role::kControl,
             const PeerRegistry* peers = nullptr)
      : supervisor_(supervisor), events_(events), granted_(granted), peers_(peers) {}

  grpc::Status Load(grpc::ServerContext*, const v1::LoadRequest*, v1::LoadResponse*) override;
  grpc::Status Reload(grpc::ServerContext*, const v1::ReloadRequest*, v1::ReloadResponse*) override;
  grpc::Status Unload(grpc::ServerContext*, const v1::UnloadRequest*, v1::UnloadResponse*) override;
  grpc::Status Call(grpc::ServerContext*, const v1::CallRequest*, v1::CallResponse*) override;
  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*, v1::StatusResponse*) override;
  // Whether the caller of an Events stream may follow events (the view
  // role): OK or PERMISSION_DENIED. Thread-safe.
  grpc::Status AdmitEvents(grpc::ServerContext* context) const { return Require(context, Role::kView); }
  // A subscriber more than kMaxEventBacklog events behind is ended with
  // RESOURCE_EXHAUSTED (see EventStreams).
  static constexpr size_t kMaxEventBacklog = 256;
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchRequest*, v1::WatchResponse*) override;
  grpc::Status ReloadConfig(grpc::ServerContext*, const v1::ReloadConfigRequest*, v1::ReloadConfigResponse*) override;

  // What ReloadConfig runs (ConfigApplier::Reload); unset when relibd has no
  // config file. Set before the server starts.
  void set_config_reloader(std::function<absl::StatusOr<v1::ReloadConfigResponse>()> reloader) {
    config_reloader_ = std::move(reloader);
  }

 private:
  // OK if this instance's role includes `needed`.
  grpc::Status Require(grpc::ServerContextBase* context, Role needed) const;

  Supervisor& supervisor_;
  EventBus& events_;
  const Role granted_;
  const PeerRegistry* const peers_;
  std::function<absl::StatusOr<v1::ReloadConfigResponse>()> config_reloader_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_RPC_SERVICE_H_
