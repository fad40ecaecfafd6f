// The baseline server of the Call figures: a bare gRPC sync unary echo on a
// Unix socket, with relibd's own message types and message size limit, and
// nothing behind it. Usage: relib_bench_echo_server [--from-fd] [--bdp-off]
// SOCKET_PATH (runs until SIGTERM). --from-fd: the server has no listening
// port; a thread accepts on the socket and hands each connection to
// grpc::AddInsecureChannelFromFd, as relibd does (daemon/peer_listener.h),
// with gRPC's poll engine, as relibd uses. --bdp-off: HTTP/2 BDP probing
// off, as on relibd's servers (see BuildServer in daemon/relibd_main.cc):
// gRPC 1.51 then keeps the connection's receive window at 64 KiB, so a
// larger request waits for a WINDOW_UPDATE from the server.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "bench/served_from_fd.h"
#include "common/message_limits.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/server_posix.h"
#include "relib/bench/echo.grpc.pb.h"

namespace {

class BareEcho final : public relib::bench::BareEcho::Service {
  grpc::Status Call(grpc::ServerContext*, const relib::v1::CallRequest* request,
                    relib::v1::CallResponse* response) override {
    // The refused request of the "RPC path alone" figure: the same status
    // and message as relibd's answer to a Reload of a module it lacks.
    if (request->name() == "relib-bench-no-such-module") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no module named 'relib-bench-no-such-module'");
    }
    response->set_output(request->input());
    response->set_version(1);
    return grpc::Status::OK;
  }
};

}  // namespace

int main(int argc, char** argv) {
  bool from_fd = false, bdp_off = false, usage = argc < 2;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--from-fd") == 0) {
      from_fd = true;
    } else if (std::strcmp(argv[i], "--bdp-off") == 0) {
      bdp_off = true;
    } else {
      usage = true;
    }
  }
  if (usage) {
    std::fprintf(stderr, "usage: %s [--from-fd] [--bdp-off] SOCKET_PATH\n", argv[0]);
    return 2;
  }
  const char* path = argv[argc - 1];
  if (from_fd) ::setenv("GRPC_POLL_STRATEGY", "poll", 0);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // gRPC's threads inherit the mask

  BareEcho service;
  grpc::ServerBuilder builder;
  if (!from_fd) builder.AddListeningPort(std::string("unix:") + path, grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(relib::common::kDefaultMaxMessageMb << 20);
  builder.SetMaxSendMessageSize(relib::common::kDefaultMaxMessageMb << 20);
  if (bdp_off) builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return 1;
  if (from_fd && relib::bench::ListenAndHandOver(path, server.get()) != 0) return 1;
  int signal = 0;
  sigwait(&signals, &signal);
  server->Shutdown();
  return 0;
}
