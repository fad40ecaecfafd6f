// relibd's own accept loop on the API's Unix socket: reads each client's
// credentials (SO_PEERCRED) when it connects and hands the connection to the
// gRPC server of the role it has, so every RPC is checked against its peer.
//
// Why not gRPC's own listener: gRPC 1.51 does not give a handler the uid of a
// Unix-socket peer, and after one accept4 fails with EMFILE it stops
// accepting on that listener for good. Here each accepted fd goes to
// grpc::AddInsecureChannelFromFd of one of three servers — control (every
// method), view (Status, Events; control methods denied), none (everything
// denied) — so which server received a call *is* the authorization, and no
// fd-number lookup (gRPC names such peers "fd:<n>", and n is reused) can
// grant a role. The uid in a denial message comes from PeerRegistry.
#ifndef RELIB_DAEMON_PEER_LISTENER_H_
#define RELIB_DAEMON_PEER_LISTENER_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "daemon/access.h"
#include "grpcpp/server.h"

namespace relib::daemon {

struct SocketOptions {
  mode_t mode = 0660;      // of the socket file
  mode_t dir_mode = 0750;  // of the socket's directory, when relibd creates it
  std::optional<uid_t> owner;  // chown of the socket (and a created directory)
  std::optional<gid_t> group;
};

// Creates, binds and listens on the Unix socket at `path` with `options`
// applied (the directory is created if missing, then gets dir_mode, owner
// and group; an existing directory is left alone). REQUIRES: no live daemon
// on `path` (a stale socket file is removed by the caller). The returned fd
// is O_CLOEXEC and non-blocking; a socket-activated listening fd can be used
// in its place.
absl::StatusOr<common::UniqueFd> BindUnixSocket(const std::string& path, const SocketOptions& options);

// A TCP listening socket relibd opens for a module (--preopen-tcp
// MODULE:KEY=[ADDR:]PORT, ADDR an IPv4 address, default 127.0.0.1).
struct PreopenedSocket {
  std::string module;
  std::string key;
  common::UniqueFd fd;
};
// INVALID_ARGUMENT for a malformed spec; the errno of socket/bind/listen.
absl::StatusOr<PreopenedSocket> ListenTcp(const std::string& spec);

class PeerListener {
 public:
  // The servers take accepted connections of each role. REQUIRES: started
  // servers (no listening ports of their own), `policy`, `registry` and the
  // servers outlive the listener.
  struct Servers {
    grpc::Server* control = nullptr;
    grpc::Server* view = nullptr;
    grpc::Server* none = nullptr;
  };

  // Starts the accept loop on already-listening `listening` (bound by
  // BindUnixSocket or passed by the service manager). Accept errors never
  // stop the loop: EMFILE/ENFILE/ENOBUFS/ENOMEM back off (10 ms doubling to
  // 1 s, logged once per burst) and accepting resumes.
  static absl::StatusOr<std::unique_ptr<PeerListener>> Start(common::UniqueFd listening, const AccessPolicy& policy,
                                                            PeerRegistry& registry, Servers servers);
  // Stops accepting (joins the loop). Connections already handed over stay
  // with their servers.
  ~PeerListener();

  // Connections accepted so far (for tests and logs).
  uint64_t accepted() const { return accepted_.load(); }

 private:
  PeerListener(common::UniqueFd listening, common::UniqueFd wakeup, const AccessPolicy& policy,
               PeerRegistry& registry, Servers servers);
  void Loop();
  void HandOver(common::UniqueFd connection);

  common::UniqueFd listening_;
  common::UniqueFd wakeup_;  // eventfd: written by the destructor
  const AccessPolicy& policy_;
  PeerRegistry& registry_;
  const Servers servers_;
  std::atomic<uint64_t> accepted_{0};
  std::thread thread_;
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_PEER_LISTENER_H_
