#include "daemon/activated_listener.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "grpcpp/server_posix.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {

absl::StatusOr<std::unique_ptr<ActivatedListener>> ActivatedListener::Start(common::UniqueFd listener,
                                                                            grpc::Server* server) {
  common::UniqueFd wakeup(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wakeup.valid()) return absl::ErrnoToStatus(errno, "eventfd");
  std::unique_ptr<ActivatedListener> self(new ActivatedListener(std::move(listener), std::move(wakeup), server));
  self->thread_ = std::thread([raw = self.get()] { raw->Loop(); });
  return self;
}

ActivatedListener::~ActivatedListener() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wakeup_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void ActivatedListener::Loop() {
  while (true) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {wakeup_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("phase=accept poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    // gRPC requires a non-blocking fd.
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of fds: the connection waits in the backlog; try again soon
        // rather than give the listener up.
        spdlog::warn("phase=accept {}; accepting again in 100 ms", std::strerror(errno));
        pollfd stop{wakeup_.get(), POLLIN, 0};
        if (::poll(&stop, 1, 100) > 0) return;
      }
      continue;
    }
    grpc::AddInsecureChannelFromFd(server_, fd);
  }
}

}  // namespace relib::daemon
