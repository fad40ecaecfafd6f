// Serves the gRPC API on a listening socket relibd did not bind itself
// (systemd socket activation): accepts each connection and hands it to the
// gRPC server. Running out of fds pauses accepting instead of ending it.
// (The access issue's own accept loop, with peer checks, can take over the
// same fd: see systemd::PassedFds::api_socket.)
#ifndef RELIB_DAEMON_ACTIVATED_LISTENER_H_
#define RELIB_DAEMON_ACTIVATED_LISTENER_H_

#include <atomic>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "grpcpp/server.h"

namespace relib::daemon {

class ActivatedListener {
 public:
  // Starts accepting on `listener` (a listening stream socket) for `server`,
  // which must outlive this object. Errors: the eventfd cannot be made.
  static absl::StatusOr<std::unique_ptr<ActivatedListener>> Start(common::UniqueFd listener, grpc::Server* server);
  // Stops accepting and joins the thread; the socket is closed.
  ~ActivatedListener();

 private:
  ActivatedListener(common::UniqueFd listener, common::UniqueFd wakeup, grpc::Server* server)
      : listener_(std::move(listener)), wakeup_(std::move(wakeup)), server_(server) {}
  void Loop();

  common::UniqueFd listener_;
  common::UniqueFd wakeup_;
  grpc::Server* server_;
  std::thread thread_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_ACTIVATED_LISTENER_H_
