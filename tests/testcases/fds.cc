// File descriptors a module leaves open.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "relib/module.hpp"

namespace {

std::string OpenFile(std::string_view path) {
  int fd = ::open(std::string(path).c_str(), O_RDONLY);
  if (fd < 0) throw relib::Error("open failed");
  return std::to_string(fd);
}

std::string FopenFile(std::string_view path) {
  FILE* f = std::fopen(std::string(path).c_str(), "r");
  if (f == nullptr) throw relib::Error("fopen failed");
  return std::to_string(fileno(f));
}

// Listens on 127.0.0.1 on an ephemeral port; returns "fd port".
std::string Listen(std::string_view) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || ::listen(fd, 4) != 0) {
    throw relib::Error("bind/listen failed");
  }
  socklen_t len = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &len);
  return std::to_string(fd) + " " + std::to_string(ntohs(address.sin_port));
}

std::string Pipe(std::string_view) {
  int fds[2];
  if (::pipe(fds) != 0) throw relib::Error("pipe failed");
  return std::to_string(fds[0]) + " " + std::to_string(fds[1]);
}

std::string EventFd(std::string_view) { return std::to_string(::eventfd(0, 0)); }

std::string OpenAndClose(std::string_view path) {
  int fd = ::open(std::string(path).c_str(), O_RDONLY);
  ::close(fd);
  return "closed";
}

// Behind the agent's back: no interposed function sees this fd open.
std::string RawOpen(std::string_view path) {
  long fd = ::syscall(SYS_openat, AT_FDCWD, std::string(path).c_str(), O_RDONLY, 0);
  if (fd < 0) throw relib::Error("raw openat failed");
  return std::to_string(fd);
}

// Closes, behind the agent's back, every fd of the worker's own /proc entry
// (the agent keeps some open across its checks); returns how many.
std::string RawCloseProcFds(std::string_view) {
  std::string prefix = "/proc/" + std::to_string(::getpid()) + "/";
  std::vector<int> found;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (dirent* entry = ::readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      int fd = std::atoi(entry->d_name);
      if (fd == ::dirfd(dir)) continue;
      char link[256] = {};
      std::string path = std::string("/proc/self/fd/") + entry->d_name;
      ssize_t n = ::readlink(path.c_str(), link, sizeof(link) - 1);
      if (n > 0 && std::string(link, n).rfind(prefix, 0) == 0) found.push_back(fd);
    }
    ::closedir(dir);
  }
  for (int fd : found) ::syscall(SYS_close, fd);
  return std::to_string(found.size());
}

}  // namespace

RELIB_MODULE("fds", nullptr, nullptr, relib::Export<OpenFile>("open_file"), relib::Export<FopenFile>("fopen_file"),
             relib::Export<Listen>("listen"), relib::Export<Pipe>("pipe"), relib::Export<EventFd>("eventfd"),
             relib::Export<OpenAndClose>("open_and_close"), relib::Export<RawOpen>("raw_open"),
             relib::Export<RawCloseProcFds>("raw_close_proc_fds"));
