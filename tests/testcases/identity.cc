// What a worker may do: `ids` reports the credentials the module runs with
// ("uid=.. gid=.. groups=.. nnp=.."), `open` tries to open its input path
// read-only ("ok" or the errno name), `alloc` allocates and touches its input
// in MiB, `ping` answers "pong", `spin` burns CPU forever.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {

std::string Ids(std::string_view) {
  return "uid=" + std::to_string(::getuid()) + " gid=" + std::to_string(::getgid()) +
         " groups=" + std::to_string(::getgroups(0, nullptr)) +
         " nnp=" + std::to_string(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
}

std::string Open(std::string_view input) {
  int fd = ::open(std::string(input).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const char* name = ::strerrorname_np(errno);
    return name ? name : "error";
  }
  ::close(fd);
  return "ok";
}

std::string Alloc(std::string_view input) {
  size_t mib = 0;
  std::from_chars(input.data(), input.data() + input.size(), mib);
  // 1 MiB at a time, leaked on purpose, a little slower than memory allows:
  // a worker with a memory limit dies of it part-way, and relibd has seen
  // it grow.
  for (size_t i = 0; i < mib; ++i) {
    char* block = static_cast<char*>(std::malloc(1 << 20));
    if (block == nullptr) std::abort();  // what most code does when memory runs out
    for (size_t at = 0; at < (1 << 20); at += 4096) block[at] = 1;
    ::usleep(1000);
  }
  return "allocated";
}

std::string Ping(std::string_view) { return "pong"; }

// Burns CPU until the worker's CPU time limit ends it.
std::string Spin(std::string_view) {
  volatile uint64_t n = 0;
  while (true) n = n + 1;
  return "unreachable";
}

}  // namespace

RELIB_MODULE("identity", nullptr, nullptr, relib::Export<Ids>("ids"), relib::Export<Open>("open"),
             relib::Export<Alloc>("alloc"), relib::Export<Ping>("ping"), relib::Export<Spin>("spin"));
