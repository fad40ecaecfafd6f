// How the bench's comparison servers serve "as relibd serves": they accept
// connections themselves and hand each fd to gRPC, as relibd's PeerListener
// does (which also reads SO_PEERCRED there, once per connection).
#ifndef RELIB_BENCH_SERVED_FROM_FD_H_
#define RELIB_BENCH_SERVED_FROM_FD_H_

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdio>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "grpcpp/server_posix.h"

namespace relib::bench {

// Listens on `path` (a Unix socket) and hands every accepted connection to
// `server`, until the process ends. -1 if it cannot listen.
inline int ListenAndHandOver(const char* path, grpc::Server* server) {
  int listening = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path);
  if (listening < 0 || ::bind(listening, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::listen(listening, SOMAXCONN) != 0) {
    return -1;
  }
  std::thread([listening, server] {
    while (true) {
      int fd = ::accept4(listening, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) grpc::AddInsecureChannelFromFd(server, fd);
    }
  }).detach();
  return 0;
}

}  // namespace relib::bench

#endif  // RELIB_BENCH_SERVED_FROM_FD_H_
