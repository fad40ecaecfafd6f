#include "agent/fd_tracker.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "agent/proc_self_file.h"

namespace relib::agent::fds {
namespace {

constexpr int kMaxTrackedFd = 65536;

struct Owner {
  std::atomic<ModuleId> module{kHost};
  std::atomic<dev_t> dev{0};
  std::atomic<ino_t> ino{0};
};
Owner owners[kMaxTrackedFd];
std::atomic<bool> host_fd[kMaxTrackedFd];
RanSince ran;
std::mutex sweep_mutex;
// Highest fd ever claimed: bounds the walks below (fds are small integers).
std::atomic<int> highest_claimed{-1};

void Claim(int fd, ModuleId module) {
  if (fd < 0 || fd >= kMaxTrackedFd || module == kHost) return;
  struct stat st;
  if (::fstat(fd, &st) != 0) return;
  int highest = highest_claimed.load(std::memory_order_relaxed);
  while (fd > highest && !highest_claimed.compare_exchange_weak(highest, fd)) {
  }
  owners[fd].dev = st.st_dev;
  owners[fd].ino = st.st_ino;
  owners[fd].module = module;
}

void Unclaim(int fd) {
  if (fd >= 0 && fd < kMaxTrackedFd) owners[fd].module = kHost;
}

void Unmark(int fd) {
  if (fd >= 0 && fd < kMaxTrackedFd) host_fd[fd].store(false, std::memory_order_relaxed);
}

// The fd still refers to the object that was claimed.
bool StillSame(int fd) {
  struct stat st;
  return ::fstat(fd, &st) == 0 && st.st_dev == owners[fd].dev && st.st_ino == owners[fd].ino;
}

// /proc/self/fd, open across sweeps (listed anew after each seek to its
// start): the opendir and closedir of a fresh listing were about a quarter
// of its cost (17 µs -> 13 µs for ~25 fds here). One for every caller
// (constant-initialised, no guard).
// ABSL_GUARDED_BY(sweep_mutex).
constinit ProcSelfFile fd_listing("/proc/self/fd", O_DIRECTORY);

// Calls f for each fd open now but the listing's own.
// REQUIRES: sweep_mutex held.
template <typename F>
void ForEachOpenFd(F f) {
  const int self = fd_listing.Get();
  if (self < 0 || ::lseek(self, 0, SEEK_SET) != 0) return;
  alignas(dirent64) char buffer[4096];
  for (;;) {
    ssize_t size = ::getdents64(self, buffer, sizeof(buffer));
    if (size < 0 && errno == EINTR) continue;
    if (size <= 0) return;
    for (ssize_t offset = 0; offset < size;) {
      const auto* entry = reinterpret_cast<const dirent64*>(buffer + offset);
      offset += entry->d_reclen;
      if (entry->d_name[0] == '.') continue;
      int fd = std::atoi(entry->d_name);
      if (fd != self) f(fd);
    }
  }
}

std::string SocketAddress(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address);
    ::inet_ntop(AF_INET, &in.sin_addr, text, sizeof(text));
    return absl::StrCat(text, ":", ntohs(in.sin_port));
  }
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof(text));
    return absl::StrCat("[", text, "]:", ntohs(in6.sin6_port));
  }
  if (address.ss_family == AF_UNIX) {
    const auto& un = reinterpret_cast<const sockaddr_un&>(address);
    if (un.sun_path[0] == '\0') return un.sun_path[1] ? absl::StrCat("@", un.sun_path + 1) : "unnamed";
    return un.sun_path;
  }
  return "?";
}

std::string DescribeSocket(int fd) {
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(int);
  ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof(int);
  ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(int);
  ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  const char* proto = domain == AF_UNIX ? "unix" : type == SOCK_STREAM ? "tcp" : type == SOCK_DGRAM ? "udp" : "raw";
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  std::string text = proto;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) == 0) {
    absl::StrAppend(&text, " ", SocketAddress(local));
  }
  if (listening) {
    absl::StrAppend(&text, " listening");
  } else if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0) {
    absl::StrAppend(&text, " -> ", SocketAddress(peer));
  }
  return text;
}

OpenFd Describe(int fd) {
  OpenFd open;
  open.fd = fd;
  char link[512] = {};
  ssize_t n = ::readlink(absl::StrCat("/proc/self/fd/", fd).c_str(), link, sizeof(link) - 1);
  std::string target = n > 0 ? std::string(link, n) : "";
  struct stat st;
  bool have_stat = ::fstat(fd, &st) == 0;
  if (have_stat && S_ISSOCK(st.st_mode)) {
    open.kind = "socket";
    open.description = DescribeSocket(fd);
  } else if (have_stat && S_ISFIFO(st.st_mode)) {
    open.kind = "pipe";
    open.description = target;
  } else if (have_stat && S_ISDIR(st.st_mode)) {
    open.kind = "directory";
    open.description = target;
  } else if (target.rfind("/memfd:", 0) == 0) {
    open.kind = "memfd";
    open.description = target;
  } else if (target.rfind("anon_inode:", 0) == 0) {
    std::string what = target.substr(11);
    open.kind = what.find("eventfd") != std::string::npos     ? "eventfd"
                : what.find("eventpoll") != std::string::npos ? "epoll"
                : what.find("timerfd") != std::string::npos   ? "timerfd"
                : what.find("signalfd") != std::string::npos  ? "signalfd"
                : what.find("inotify") != std::string::npos   ? "inotify"
                                                              : "other";
    open.description = target;
  } else {
    open.kind = "file";
    open.description = target;
  }
  return open;
}

template <typename T>
T Real(const char* name) {
  HostScope host;
  return reinterpret_cast<T>(::dlsym(RTLD_NEXT, name));
}

// The host's fds are marked, so that a sweep never takes them for a
// module's; a module's get their owner.
void Own(int fd, ModuleId module) {
  if (fd < 0 || fd >= kMaxTrackedFd) return;
  if (module == kHost) {
    owners[fd].module.store(kHost, std::memory_order_relaxed);
    host_fd[fd].store(true, std::memory_order_relaxed);
  } else {
    host_fd[fd].store(false, std::memory_order_relaxed);
    Claim(fd, module);
  }
}

int Track(int fd) {
  if (fd >= 0) Own(fd, CurrentModule());
  return fd;
}

int TrackPair(int rc, int fds[2]) {
  if (rc == 0) {
    Own(fds[0], CurrentModule());
    Own(fds[1], CurrentModule());
  }
  return rc;
}

// FILE and DIR fds are closed inside libc (fclose, closedir), out of sight of
// close() above: only a module's are recorded (a stale record is noticed by
// StillSame), never marked as the host's.
void TrackHidden(int fd) {
  ModuleId module = CurrentModule();
  if (fd >= 0 && module != kHost) Claim(fd, module);
}

FILE* TrackFile(FILE* file) {
  if (file != nullptr) TrackHidden(::fileno(file));
  return file;
}

}  // namespace

void SnapshotHostFds() {
  std::lock_guard<std::mutex> lock(sweep_mutex);
  ForEachOpenFd([](int fd) {
    if (fd < kMaxTrackedFd) host_fd[fd] = true;
  });
}

void AdoptAsHost(int fd) {
  if (fd < 0 || fd >= kMaxTrackedFd) return;
  Unclaim(fd);
  host_fd[fd] = true;
}

void ForgetHost(int fd) {
  if (fd >= 0 && fd < kMaxTrackedFd) host_fd[fd] = false;
}

void NoteModuleRan(ModuleId id) { ran.Note(id); }

int Sweep() {
  HostScope host;
  std::lock_guard<std::mutex> lock(sweep_mutex);
  const ModuleId only = ran.Take();
  // Nobody ran since the last sweep: the walk below would only read (every
  // claim is made for `only`), so it is not made at all.
  if (only == kHost) return 0;
  int unattributed = 0;
  ForEachOpenFd([&](int fd) {
    if (fd >= kMaxTrackedFd || host_fd[fd]) return;
    if (owners[fd].module != kHost && StillSame(fd)) return;
    // Several modules ran: recorded as nobody's, so that no later sweep
    // hands it to whichever module ran alone then.
    Claim(fd, only);
    if (only == kUnattributed) ++unattributed;
  });
  return unattributed;
}

template <typename F>
void ForEachOwned(ModuleId id, F f) {
  int highest = highest_claimed.load(std::memory_order_relaxed);
  for (int fd = 0; fd <= highest; ++fd) {
    if (owners[fd].module.load(std::memory_order_relaxed) != id) continue;
    if (!StillSame(fd)) {
      Unclaim(fd);
      continue;
    }
    f(fd);
  }
}

std::vector<OpenFd> Open(ModuleId id) {
  HostScope host;
  std::vector<OpenFd> open;
  ForEachOwned(id, [&](int fd) { open.push_back(Describe(fd)); });
  return open;
}

int Count(ModuleId id) {
  int count = 0;
  ForEachOwned(id, [&](int) { ++count; });
  return count;
}

int CloseAll(ModuleId id) {
  int closed = 0;
  for (const OpenFd& open : Open(id)) {
    Unclaim(open.fd);
    if (::close(open.fd) == 0) ++closed;
  }
  return closed;
}

void Forget(ModuleId id) {
  int highest = highest_claimed.load(std::memory_order_relaxed);
  for (int fd = 0; fd <= highest; ++fd) {
    if (owners[fd].module.load(std::memory_order_relaxed) == id) Unclaim(fd);
  }
}

}  // namespace relib::agent::fds

// Interposed fd creators: call the real function, then record the owner.
using relib::agent::fds::Real;
using relib::agent::fds::Track;
using relib::agent::fds::TrackPair;
using relib::agent::fds::TrackFile;

// open(2) takes a mode only with O_CREAT or O_TMPFILE (which includes the O_DIRECTORY bit).
#define RELIB_OPEN_MODE_ARG(flags, mode)   \
  mode_t mode = 0;                         \
  if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) { \
    va_list args;                          \
    va_start(args, flags);                 \
    mode = va_arg(args, mode_t);           \
    va_end(args);                          \
  }

extern "C" {

int open(const char* path, int flags, ...) {
  static auto real = Real<int (*)(const char*, int, ...)>("open");
  RELIB_OPEN_MODE_ARG(flags, mode);
  return Track(real(path, flags, mode));
}
int open64(const char* path, int flags, ...) {
  static auto real = Real<int (*)(const char*, int, ...)>("open64");
  RELIB_OPEN_MODE_ARG(flags, mode);
  return Track(real(path, flags, mode));
}
int openat(int dir, const char* path, int flags, ...) {
  static auto real = Real<int (*)(int, const char*, int, ...)>("openat");
  RELIB_OPEN_MODE_ARG(flags, mode);
  return Track(real(dir, path, flags, mode));
}
int openat64(int dir, const char* path, int flags, ...) {
  static auto real = Real<int (*)(int, const char*, int, ...)>("openat64");
  RELIB_OPEN_MODE_ARG(flags, mode);
  return Track(real(dir, path, flags, mode));
}
int creat(const char* path, mode_t mode) {
  static auto real = Real<int (*)(const char*, mode_t)>("creat");
  return Track(real(path, mode));
}
int socket(int domain, int type, int protocol) {
  static auto real = Real<int (*)(int, int, int)>("socket");
  return Track(real(domain, type, protocol));
}
int socketpair(int domain, int type, int protocol, int fds[2]) {
  static auto real = Real<int (*)(int, int, int, int*)>("socketpair");
  return TrackPair(real(domain, type, protocol, fds), fds);
}
int accept(int fd, sockaddr* address, socklen_t* len) {
  static auto real = Real<int (*)(int, sockaddr*, socklen_t*)>("accept");
  return Track(real(fd, address, len));
}
int accept4(int fd, sockaddr* address, socklen_t* len, int flags) {
  static auto real = Real<int (*)(int, sockaddr*, socklen_t*, int)>("accept4");
  return Track(real(fd, address, len, flags));
}
int pipe(int fds[2]) {
  static auto real = Real<int (*)(int*)>("pipe");
  return TrackPair(real(fds), fds);
}
int pipe2(int fds[2], int flags) {
  static auto real = Real<int (*)(int*, int)>("pipe2");
  return TrackPair(real(fds, flags), fds);
}
int dup(int fd) {
  static auto real = Real<int (*)(int)>("dup");
  return Track(real(fd));
}
int dup2(int fd, int target) {
  static auto real = Real<int (*)(int, int)>("dup2");
  return Track(real(fd, target));
}
int dup3(int fd, int target, int flags) {
  static auto real = Real<int (*)(int, int, int)>("dup3");
  return Track(real(fd, target, flags));
}
int eventfd(unsigned int value, int flags) {
  static auto real = Real<int (*)(unsigned int, int)>("eventfd");
  return Track(real(value, flags));
}
int epoll_create(int size) {
  static auto real = Real<int (*)(int)>("epoll_create");
  return Track(real(size));
}
int epoll_create1(int flags) {
  static auto real = Real<int (*)(int)>("epoll_create1");
  return Track(real(flags));
}
int timerfd_create(int clock, int flags) {
  static auto real = Real<int (*)(int, int)>("timerfd_create");
  return Track(real(clock, flags));
}
int signalfd(int fd, const void* mask, int flags) {
  static auto real = Real<int (*)(int, const void*, int)>("signalfd");
  return Track(real(fd, mask, flags));
}
int memfd_create(const char* name, unsigned int flags) {
  static auto real = Real<int (*)(const char*, unsigned int)>("memfd_create");
  return Track(real(name, flags));
}
int inotify_init1(int flags) {
  static auto real = Real<int (*)(int)>("inotify_init1");
  return Track(real(flags));
}
int close(int fd) {
  static auto real = Real<int (*)(int)>("close");
  relib::agent::fds::Unclaim(fd);
  relib::agent::fds::Unmark(fd);
  return real(fd);
}

// libc functions that open their fd through libc-internal calls the
// interposers above never see.
FILE* fopen(const char* path, const char* mode) {
  static auto real = Real<FILE* (*)(const char*, const char*)>("fopen");
  return TrackFile(real(path, mode));
}
FILE* fopen64(const char* path, const char* mode) {
  static auto real = Real<FILE* (*)(const char*, const char*)>("fopen64");
  return TrackFile(real(path, mode));
}
FILE* freopen(const char* path, const char* mode, FILE* stream) {
  static auto real = Real<FILE* (*)(const char*, const char*, FILE*)>("freopen");
  return TrackFile(real(path, mode, stream));
}
FILE* freopen64(const char* path, const char* mode, FILE* stream) {
  static auto real = Real<FILE* (*)(const char*, const char*, FILE*)>("freopen64");
  return TrackFile(real(path, mode, stream));
}
FILE* tmpfile() {
  static auto real = Real<FILE* (*)()>("tmpfile");
  return TrackFile(real());
}
FILE* tmpfile64() {
  static auto real = Real<FILE* (*)()>("tmpfile64");
  return TrackFile(real());
}
FILE* popen(const char* command, const char* mode) {
  static auto real = Real<FILE* (*)(const char*, const char*)>("popen");
  return TrackFile(real(command, mode));
}
DIR* opendir(const char* path) {
  static auto real = Real<DIR* (*)(const char*)>("opendir");
  DIR* dir = real(path);
  if (dir != nullptr) relib::agent::fds::TrackHidden(::dirfd(dir));
  return dir;
}
int mkstemp(char* name) {
  static auto real = Real<int (*)(char*)>("mkstemp");
  return Track(real(name));
}
int mkostemp(char* name, int flags) {
  static auto real = Real<int (*)(char*, int)>("mkostemp");
  return Track(real(name, flags));
}
int mkstemp64(char* name) {
  static auto real = Real<int (*)(char*)>("mkstemp64");
  return Track(real(name));
}

}  // extern "C"
