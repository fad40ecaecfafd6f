// The baseline server of the Call figures: a bare gRPC sync unary echo on a
// Unix socket, with relibd's own message types and message size limit, and
// nothing behind it. Usage: relib_bench_echo_server SOCKET_PATH (runs until
// SIGTERM).
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "common/message_limits.h"
#include "grpcpp/grpcpp.h"
#include "relib/bench/echo.grpc.pb.h"

namespace {

class BareEcho final : public relib::bench::BareEcho::Service {
  grpc::Status Call(grpc::ServerContext*, const relib::v1::CallRequest* request,
                    relib::v1::CallResponse* response) override {
    response->set_output(request->input());
    response->set_version(1);
    return grpc::Status::OK;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SOCKET_PATH\n", argv[0]);
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // gRPC's threads inherit the mask

  BareEcho service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(std::string("unix:") + argv[1], grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(relib::common::kDefaultMaxMessageMb << 20);
  builder.SetMaxSendMessageSize(relib::common::kDefaultMaxMessageMb << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return 1;
  int signal = 0;
  sigwait(&signals, &signal);
  server->Shutdown();
  return 0;
}
