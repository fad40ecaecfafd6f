// The floor baseline of the Call figures: the bare gRPC sync unary echo of
// echo_server.cc, except that its handler forwards the request bytes to a
// child process over a Unix socketpair and answers with what the child sends
// back (one round trip to another process: the hop relibd's design requires,
// with nothing else). Each handler takes a connection of its own from a pool
// (no multiplexing, no reader thread): the cheapest such design, so it is a
// floor. Usage: relib_bench_forward_server [--from-fd] [--bdp-off]
// SOCKET_PATH (runs until SIGTERM); --bdp-off: HTTP/2 BDP probing off, as on
// relibd's servers (see echo_server.cc); --from-fd: served the way relibd
// serves (no listening port: a thread accepts and hands each connection to
// grpc::AddInsecureChannelFromFd, gRPC's poll engine), what relibd needs to
// read each client's SO_PEERCRED. An input of kReloadFloorPrefix + a path makes the
// child copy that .so, dlopen, dlsym and dlclose it, as the bench's reload
// baseline does, and answer "ok": the reload's design floor in one piece.
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/reload_baseline.h"
#include "bench/served_from_fd.h"
#include "common/message_limits.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/server_posix.h"
#include "relib/bench/echo.grpc.pb.h"

namespace {

// More connections than the sync server will ever run handlers at once in
// the bench (8 clients).
constexpr int kConnections = 64;

bool ReadFully(int fd, void* data, size_t len) {
  auto* out = static_cast<char*>(data);
  while (len > 0) {
    ssize_t n = ::read(fd, out, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// One frame: a 4-byte length, then the bytes; header and bytes in one writev.
bool WriteFrame(int fd, const std::string& bytes) {
  uint32_t length = static_cast<uint32_t>(bytes.size());
  iovec iov[2] = {{&length, sizeof(length)}, {const_cast<char*>(bytes.data()), bytes.size()}};
  size_t left = sizeof(length) + bytes.size();
  int first = 0;
  while (left > 0) {
    ssize_t n = ::writev(fd, iov + first, 2 - first);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    left -= static_cast<size_t>(n);
    size_t done = static_cast<size_t>(n);
    while (first < 2 && done >= iov[first].iov_len) done -= iov[first++].iov_len;
    if (first < 2) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + done;
      iov[first].iov_len -= done;
    }
  }
  return true;
}

bool ReadFrame(int fd, std::string* bytes) {
  uint32_t length = 0;
  if (!ReadFully(fd, &length, sizeof(length))) return false;
  bytes->resize(length);
  return ReadFully(fd, bytes->data(), length);
}

// The child: one thread per connection, echoing frames until EOF (or doing
// the reload baseline's work for an input of kReloadFloorPrefix + path).
[[noreturn]] void ChildMain(const std::vector<int>& fds) {
  std::vector<std::thread> threads;
  for (int fd : fds) {
    threads.emplace_back([fd] {
      const std::string copy = "/tmp/relib-bench-floor-" + std::to_string(::getpid()) + "-" + std::to_string(fd) + ".so";
      const size_t prefix = sizeof(relib::bench::kReloadFloorPrefix) - 1;
      std::string bytes;
      while (ReadFrame(fd, &bytes)) {
        if (bytes.size() > prefix && std::memcmp(bytes.data(), relib::bench::kReloadFloorPrefix, prefix) == 0) {
          absl::Status done = relib::bench::CopyDlopen(bytes.substr(prefix), copy);
          bytes = done.ok() ? "ok" : "error: " + std::string(done.message());
        }
        if (!WriteFrame(fd, bytes)) break;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  ::_exit(0);
}

class ForwardEcho final : public relib::bench::BareEcho::Service {
 public:
  explicit ForwardEcho(std::vector<int> fds) : free_(std::move(fds)) {}

  grpc::Status Call(grpc::ServerContext*, const relib::v1::CallRequest* request,
                    relib::v1::CallResponse* response) override {
    int fd;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      available_.wait(lock, [&] { return !free_.empty(); });
      fd = free_.back();
      free_.pop_back();
    }
    bool ok = WriteFrame(fd, request->input()) && ReadFrame(fd, response->mutable_output());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back(fd);
    }
    available_.notify_one();
    if (!ok) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the child process is gone");
    response->set_version(1);
    return grpc::Status::OK;
  }

 private:
  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<int> free_;
};

}  // namespace

int main(int argc, char** argv) {
  bool from_fd = false, bdp_off = false, usage = argc < 2;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--from-fd") {
      from_fd = true;
    } else if (std::string(argv[i]) == "--bdp-off") {
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
  // The child first, while this process has one thread.
  std::vector<int> ours, theirs;
  for (int i = 0; i < kConnections; ++i) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return 1;
    ours.push_back(pair[0]);
    theirs.push_back(pair[1]);
  }
  pid_t child = ::fork();
  if (child < 0) return 1;
  if (child == 0) {
    for (int fd : ours) ::close(fd);
    ChildMain(theirs);
  }
  for (int fd : theirs) ::close(fd);
  // After the fork: the child never runs gRPC. Read by gRPC's first use.
  if (from_fd) ::setenv("GRPC_POLL_STRATEGY", "poll", 0);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // gRPC's threads inherit the mask

  ForwardEcho service(ours);
  grpc::ServerBuilder builder;
  if (!from_fd) builder.AddListeningPort(std::string("unix:") + path, grpc::InsecureServerCredentials());
  if (bdp_off) builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.SetMaxReceiveMessageSize(relib::common::kDefaultMaxMessageMb << 20);
  builder.SetMaxSendMessageSize(relib::common::kDefaultMaxMessageMb << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return 1;
  if (from_fd && relib::bench::ListenAndHandOver(path, server.get()) != 0) return 1;
  int signal = 0;
  sigwait(&signals, &signal);
  server->Shutdown();
  // Closing our ends ends the child's threads, then the child.
  for (int fd : ours) ::close(fd);
  return 0;
}
