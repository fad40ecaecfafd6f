// The relib.v1.Relibd gRPC service: translates requests to Supervisor calls
// and absl::Status to grpc::Status. No logic of its own.
#ifndef RELIB_DAEMON_RPC_SERVICE_H_
#define RELIB_DAEMON_RPC_SERVICE_H_

#include <atomic>

#include "daemon/event_bus.h"
#include "daemon/supervisor.h"
#include "relib/v1/relibd.grpc.pb.h"

namespace relib::daemon {

// Events uses gRPC's callback API (no thread per stream: see EventStream in
// rpc_service.cc); the other methods are synchronous.
class RpcService final : public v1::Relibd::WithCallbackMethod_Events<v1::Relibd::Service> {
 public:
  RpcService(Supervisor& supervisor, EventBus& events) : supervisor_(supervisor), events_(events) {}

  grpc::Status Load(grpc::ServerContext*, const v1::LoadRequest*, v1::LoadResponse*) override;
  grpc::Status Reload(grpc::ServerContext*, const v1::ReloadRequest*, v1::ReloadResponse*) override;
  grpc::Status Unload(grpc::ServerContext*, const v1::UnloadRequest*, v1::UnloadResponse*) override;
  grpc::Status Call(grpc::ServerContext*, const v1::CallRequest*, v1::CallResponse*) override;
  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*, v1::StatusResponse*) override;
  // A subscriber more than kMaxEventBacklog events behind is ended with
  // RESOURCE_EXHAUSTED; more than EventBus::kMaxSubscribers streams at once
  // are refused with RESOURCE_EXHAUSTED.
  grpc::ServerWriteReactor<v1::Event>* Events(grpc::CallbackServerContext*, const v1::EventsRequest*) override;
  static constexpr size_t kMaxEventBacklog = 256;

 private:
  Supervisor& supervisor_;
  EventBus& events_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_RPC_SERVICE_H_
