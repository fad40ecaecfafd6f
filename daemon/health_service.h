// grpc.health.v1.Health for relibd's servers, on the synchronous API: gRPC
// 1.51's built-in health service runs on its callback API, whose two polling
// threads wake every second or so even when nobody calls. Check answers at
// once; Watch holds a thread while it is open (nobody watches an idle relibd),
// so at most kMaxWatches are open at once: RPC threads stay for the API.
#ifndef RELIB_DAEMON_HEALTH_SERVICE_H_
#define RELIB_DAEMON_HEALTH_SERVICE_H_

#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/service_type.h"

namespace relib::daemon {

// Thread-safe. Knows only the server as a whole (service ""): SERVING until
// Shutdown, NOT_SERVING after; any other service name is NOT_FOUND, as with
// gRPC's default service. Messages are encoded by hand (two tiny messages of
// the public health protocol; Debian ships no health.proto to generate from).
class HealthService final : public grpc::Service {
 public:
  HealthService();
  ~HealthService() override;

  // NOT_SERVING from now on; open Watch streams get it and end.
  void Shutdown();

  // Watch streams open at once beyond this are refused (RESOURCE_EXHAUSTED).
  static constexpr int kMaxWatches = 4;

 private:
  grpc::Status Check(grpc::ServerContext* context, const grpc::ByteBuffer* request, grpc::ByteBuffer* response);
  grpc::Status Watch(grpc::ServerContext* context, const grpc::ByteBuffer* request,
                     grpc::ServerWriter<grpc::ByteBuffer>* writer);

  std::mutex mutex_;
  std::condition_variable changed_;
  bool serving_ ABSL_GUARDED_BY(mutex_) = true;
  int watches_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_HEALTH_SERVICE_H_
