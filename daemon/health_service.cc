#include "daemon/health_service.h"

#include <chrono>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/impl/rpc_service_method.h"
#include "grpcpp/support/method_handler.h"

namespace relib::daemon {
namespace {

// grpc.health.v1.HealthCheckResponse.ServingStatus.
constexpr int kServing = 1;
constexpr int kNotServing = 2;
// How often an open Watch looks whether its client left (the sync API tells
// a handler of a cancellation only when asked).
constexpr std::chrono::seconds kWatchPoll{1};

// HealthCheckRequest { string service = 1; }: the service name, or nullopt
// if the bytes are not such a message.
std::optional<std::string> ServiceOf(const grpc::ByteBuffer& request) {
  grpc::Slice slice;
  std::string bytes;
  if (!request.DumpToSingleSlice(&slice).ok()) return std::nullopt;
  bytes.assign(reinterpret_cast<const char*>(slice.begin()), slice.size());
  google::protobuf::io::ArrayInputStream array(bytes.data(), static_cast<int>(bytes.size()));
  google::protobuf::io::CodedInputStream in(&array);
  std::string service;
  while (uint32_t tag = in.ReadTag()) {
    if (google::protobuf::internal::WireFormatLite::GetTagFieldNumber(tag) == 1 &&
        google::protobuf::internal::WireFormatLite::GetTagWireType(tag) ==
            google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length;
      if (!in.ReadVarint32(&length) || !in.ReadString(&service, static_cast<int>(length))) return std::nullopt;
    } else if (!google::protobuf::internal::WireFormatLite::SkipField(&in, tag)) {
      return std::nullopt;
    }
  }
  if (!in.ConsumedEntireMessage()) return std::nullopt;
  return service;
}

// HealthCheckResponse { ServingStatus status = 1; }.
grpc::ByteBuffer Response(int status) {
  const char bytes[2] = {0x08, static_cast<char>(status)};
  grpc::Slice slice(bytes, sizeof bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

HealthService::HealthService() {
  using grpc::internal::RpcMethod;
  using grpc::internal::RpcServiceMethod;
  AddMethod(new RpcServiceMethod(
      "/grpc.health.v1.Health/Check", RpcMethod::NORMAL_RPC,
      new grpc::internal::RpcMethodHandler<HealthService, grpc::ByteBuffer, grpc::ByteBuffer>(
          [](HealthService* self, grpc::ServerContext* context, const grpc::ByteBuffer* request,
             grpc::ByteBuffer* response) { return self->Check(context, request, response); },
          this)));
  AddMethod(new RpcServiceMethod(
      "/grpc.health.v1.Health/Watch", RpcMethod::SERVER_STREAMING,
      new grpc::internal::ServerStreamingHandler<HealthService, grpc::ByteBuffer, grpc::ByteBuffer>(
          [](HealthService* self, grpc::ServerContext* context, const grpc::ByteBuffer* request,
             grpc::ServerWriter<grpc::ByteBuffer>* writer) { return self->Watch(context, request, writer); },
          this)));
}

HealthService::~HealthService() { Shutdown(); }

void HealthService::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    serving_ = false;
  }
  changed_.notify_all();
}

grpc::Status HealthService::Check(grpc::ServerContext*, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) {
  std::optional<std::string> service = ServiceOf(*request);
  if (!service) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "not a HealthCheckRequest");
  if (!service->empty()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service");
  std::lock_guard<std::mutex> lock(mutex_);
  *response = Response(serving_ ? kServing : kNotServing);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* context, const grpc::ByteBuffer* request,
                                  grpc::ServerWriter<grpc::ByteBuffer>* writer) {
  std::optional<std::string> service = ServiceOf(*request);
  if (!service) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "not a HealthCheckRequest");
  // The protocol's answer for a service it does not know, kept open.
  {
    std::lock_guard<std::mutex> count_lock(mutex_);
    if (watches_ >= kMaxWatches) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("too many open health watches (", kMaxWatches, "); use Check"));
    }
    ++watches_;
  }
  // Declared before `lock`, so it runs after `lock` let go of the mutex.
  struct Release {
    HealthService* self;
    ~Release() {
      std::lock_guard<std::mutex> count_lock(self->mutex_);
      --self->watches_;
    }
  } release{this};
  std::unique_lock<std::mutex> lock(mutex_);
  bool serving = serving_;
  int sent = service->empty() ? (serving ? kServing : kNotServing) : 3 /* SERVICE_UNKNOWN */;
  lock.unlock();
  if (!writer->Write(Response(sent))) return grpc::Status::OK;
  lock.lock();
  while (service->empty() && serving_ && !context->IsCancelled()) changed_.wait_for(lock, kWatchPoll);
  bool now_serving = serving_;
  lock.unlock();
  if (service->empty() && !now_serving && sent == kServing) writer->Write(Response(kNotServing));
  if (!service->empty()) {
    // Unknown services never change: wait for the client or the end.
    lock.lock();
    while (serving_ && !context->IsCancelled()) changed_.wait_for(lock, kWatchPoll);
  }
  return grpc::Status::OK;
}

}  // namespace relib::daemon
