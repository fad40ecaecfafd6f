#include "daemon/peer_listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "grpcpp/server_posix.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {

absl::StatusOr<common::UniqueFd> BindUnixSocket(const std::string& path, const SocketOptions& options) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path ", path, " is longer than ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) {
    std::error_code error;
    if (!std::filesystem::exists(dir, error)) {
      std::filesystem::create_directories(dir, error);
      if (error) return absl::FailedPreconditionError(absl::StrCat("cannot create ", dir.string(), ": ", error.message()));
      // Only a directory relibd made is relibd's to restrict.
      if (::chmod(dir.c_str(), options.dir_mode) != 0) return absl::ErrnoToStatus(errno, "chmod " + dir.string());
      if ((options.owner || options.group) &&
          ::chown(dir.c_str(), options.owner.value_or(-1), options.group.value_or(-1)) != 0) {
        return absl::ErrnoToStatus(errno, "chown " + dir.string());
      }
    }
  }
  common::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  // Bound with no access at all, opened up only once mode and owner are right:
  // nobody can connect in between.
  mode_t old_umask = ::umask(0777);
  int bound = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  ::umask(old_umask);
  if (bound != 0) return absl::ErrnoToStatus(bind_errno, "bind " + path);
  if ((options.owner || options.group) &&
      ::chown(path.c_str(), options.owner.value_or(-1), options.group.value_or(-1)) != 0) {
    return absl::ErrnoToStatus(errno, "chown " + path);
  }
  if (::chmod(path.c_str(), options.mode) != 0) return absl::ErrnoToStatus(errno, "chmod " + path);
  if (::listen(fd.get(), SOMAXCONN) != 0) return absl::ErrnoToStatus(errno, "listen " + path);
  return fd;
}

absl::StatusOr<PreopenedSocket> ListenTcp(const std::string& spec) {
  size_t colon = spec.find(':');
  size_t equals = spec.find('=');
  if (colon == std::string::npos || equals == std::string::npos || equals < colon || colon == 0 ||
      equals == colon + 1) {
    return absl::InvalidArgumentError("expected MODULE:KEY=[ADDR:]PORT");
  }
  PreopenedSocket socket;
  socket.module = spec.substr(0, colon);
  socket.key = spec.substr(colon + 1, equals - colon - 1);
  std::string where = spec.substr(equals + 1);
  std::string address = "127.0.0.1";
  if (size_t last = where.rfind(':'); last != std::string::npos) {
    address = where.substr(0, last);
    where = where.substr(last + 1);
  }
  char* end = nullptr;
  long port = std::strtol(where.c_str(), &end, 10);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  if (where.empty() || *end != '\0' || port <= 0 || port > 65535 || ::inet_pton(AF_INET, address.c_str(), &in.sin_addr) != 1) {
    return absl::InvalidArgumentError("expected MODULE:KEY=[ADDR:]PORT with an IPv4 address and a port 1-65535");
  }
  in.sin_port = htons(static_cast<uint16_t>(port));
  socket.fd = common::UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket.fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  int one = 1;
  ::setsockopt(socket.fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(socket.fd.get(), reinterpret_cast<sockaddr*>(&in), sizeof(in)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("bind ", address, ":", port));
  }
  if (::listen(socket.fd.get(), 1024) != 0) return absl::ErrnoToStatus(errno, "listen");
  return socket;
}

absl::StatusOr<std::unique_ptr<PeerListener>> PeerListener::Start(common::UniqueFd listening,
                                                                  const AccessPolicy& policy, PeerRegistry& registry,
                                                                  Servers servers) {
  if (!listening.valid()) return absl::InvalidArgumentError("no listening socket");
  // The loop polls; accept4 must never block it (a client may vanish between
  // poll and accept).
  int flags = ::fcntl(listening.get(), F_GETFL);
  if (flags < 0 || ::fcntl(listening.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return absl::ErrnoToStatus(errno, "fcntl O_NONBLOCK on the listening socket");
  }
  common::UniqueFd wakeup(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wakeup.valid()) return absl::ErrnoToStatus(errno, "eventfd");
  std::unique_ptr<PeerListener> listener(
      new PeerListener(std::move(listening), std::move(wakeup), policy, registry, servers));
  listener->thread_ = std::thread([raw = listener.get()] { raw->Loop(); });
  return listener;
}

PeerListener::PeerListener(common::UniqueFd listening, common::UniqueFd wakeup, const AccessPolicy& policy,
                           PeerRegistry& registry, Servers servers)
    : listening_(std::move(listening)),
      wakeup_(std::move(wakeup)),
      policy_(policy),
      registry_(registry),
      servers_(servers) {}

PeerListener::~PeerListener() {
  uint64_t one = 1;
  if (::write(wakeup_.get(), &one, sizeof(one)) < 0) {
    // An eventfd write fails only on counter overflow: the loop is woken anyway.
  }
  if (thread_.joinable()) thread_.join();
}

void PeerListener::Loop() {
  using namespace std::chrono_literals;
  std::chrono::milliseconds backoff = 0ms;
  while (true) {
    if (backoff.count() > 0) {
      // Out of fds: wait out the delay (or the stop), then try again.
      pollfd stop{wakeup_.get(), POLLIN, 0};
      if (::poll(&stop, 1, static_cast<int>(backoff.count())) > 0) return;
    } else {
      pollfd fds[2] = {{listening_.get(), POLLIN, 0}, {wakeup_.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno != EINTR) {
          spdlog::error("phase=accept poll: {}", std::strerror(errno));
          ::poll(nullptr, 0, 100);
        }
        continue;
      }
      if (fds[1].revents != 0) return;
    }
    int fd = ::accept4(listening_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      if (backoff.count() > 0) spdlog::info("phase=accept accepting again");
      backoff = 0ms;
      accepted_.fetch_add(1);
      HandOver(common::UniqueFd(fd));
      continue;
    }
    switch (errno) {
      case EAGAIN:
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
        continue;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM:
        // Out of fds or memory: the pending connection stays queued; try
        // again later instead of spinning, and never give up.
        if (backoff.count() == 0) {
          spdlog::error("phase=accept cannot accept a client connection: {}; retrying with backoff",
                        std::strerror(errno));
          backoff = 10ms;
        } else {
          backoff = std::min<std::chrono::milliseconds>(backoff * 2, 1000ms);
        }
        continue;
      default:
        spdlog::error("phase=accept accept4: {}", std::strerror(errno));
        ::poll(nullptr, 0, 100);
        continue;
    }
  }
}

void PeerListener::HandOver(common::UniqueFd connection) {
  auto peer = ReadPeerCredentials(connection.get());
  if (!peer.ok()) {
    // Without credentials the connection gets no role at all.
    spdlog::warn("phase=accept {}; the connection is refused every role", peer.status().ToString());
    peer = PeerCredentials{0, static_cast<uid_t>(-1), static_cast<gid_t>(-1), {}};
  }
  Role role = peer.ok() && peer->uid != static_cast<uid_t>(-1) ? policy_.RoleOf(*peer) : Role::kNone;
  registry_.Set(connection.get(), *peer);
  spdlog::debug("phase=accept client pid={} uid={} gid={} role={}", peer->pid, peer->uid, peer->gid, RoleName(role));
  grpc::Server* server = role == Role::kControl ? servers_.control
                         : role == Role::kView  ? servers_.view
                                                : servers_.none;
  grpc::AddInsecureChannelFromFd(server, connection.Release());
}

}  // namespace relib::daemon
