// counter-service: a tiny TCP service that survives reloads and crashes.
// Every connection to 127.0.0.1:<port> gets the next value of a counter as one
// line, then is closed. The listening socket lives in relibd's fd store, so it
// stays bound (and keeps queueing connections) while versions are swapped or
// the worker is restarted; the counter is checkpointed in relibd's state store
// before each answer, so it never goes backwards.
//
// Port: $RELIB_COUNTER_PORT, else an ephemeral one (export "port" tells which).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#include "relib/module.hpp"

namespace {

relib::Host host{nullptr};
int listener = -1;
int port = 0;
std::atomic<bool> stop{false};
std::atomic<uint64_t> counter{0};
std::thread server;

void Serve() {
  while (!stop) {
    pollfd ready{listener, POLLIN, 0};
    if (::poll(&ready, 1, 20) <= 0) continue;
    int connection = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    // Checkpoint first: never answer what could be lost. A save fails when
    // relibd is gone (this worker is about to end with it) or refuses it; the
    // value is then not handed out, or the next version would hand it out again.
    const uint64_t value = counter + 1;
    if (!host.SaveState("counter", std::to_string(value))) {
      ::close(connection);
      continue;
    }
    counter = value;
    std::string line = std::to_string(value) + "\n";
    ::send(connection, line.data(), line.size(), MSG_NOSIGNAL);
    ::close(connection);
  }
}

int Listen() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const char* wanted = std::getenv("RELIB_COUNTER_PORT");
  address.sin_port = htons(static_cast<uint16_t>(wanted ? std::atoi(wanted) : 0));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || ::listen(fd, 1024) != 0) {
    ::close(fd);
    throw relib::Error("cannot listen on 127.0.0.1");
  }
  return fd;
}

void OnLoad(relib::Host h) {
  host = h;
  stop = false;
  auto saved = host.LoadState("counter");
  counter = saved ? std::stoull(*saved) : 0;
  listener = host.TakeFd("listener");
  if (listener < 0) {
    listener = Listen();
    if (!host.StoreFd("listener", listener)) host.Warn("no fd store: the socket will not survive a reload");
  }
  sockaddr_in address{};
  socklen_t len = sizeof(address);
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &len);
  port = ntohs(address.sin_port);
  server = std::thread(Serve);
  host.Info("serving on 127.0.0.1:" + std::to_string(port) + " from " + std::to_string(counter.load()));
}

void BeforeUnload() {
  stop = true;
  if (server.joinable()) server.join();
  ::close(listener);  // relibd holds its own copy
  listener = -1;
}

std::string Port(std::string_view) { return std::to_string(port); }
std::string Count(std::string_view) { return std::to_string(counter.load()); }
std::string Crash(std::string_view) {
  ::raise(SIGSEGV);
  return "unreachable";
}
std::string SelfTest(std::string_view) {
  if (listener < 0) throw relib::Error("no listening socket");
  return "ok";
}

}  // namespace

RELIB_MODULE("counter-service", OnLoad, BeforeUnload, relib::Export<Port>("port"), relib::Export<Count>("count"),
             relib::Export<Crash>("crash"), relib::Export<SelfTest>("self_test"));
