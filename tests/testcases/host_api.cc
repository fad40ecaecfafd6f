// Calls every host-API entry (log, save/load state, store/take fd) with
// hostile input on request and reports what the host answered, so a test can
// check that each call either did its job or returned an error, and that
// nothing crashed. Uses the C ABI directly (null pointers, lengths, raw
// bytes) besides the C++ SDK.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "relib/module.hpp"

namespace {

const relib_host_api& Api() { return *relib_module_host; }

// The message of the calling thread's last failed host call.
std::string LastError() { return relib::ThisHost().LastError(); }

std::string Result(int rc) {
  std::string out = "rc=" + std::to_string(rc);
  if (rc != RELIB_OK && rc != RELIB_NOT_FOUND) out += " error=" + LastError();
  return out;
}

std::string Hash(std::string_view bytes) { return std::to_string(std::hash<std::string_view>{}(bytes)); }

// "SIZE" or "SIZE CHAR": a value of SIZE bytes.
std::string MakeValue(std::string_view spec) {
  size_t size = std::strtoull(std::string(spec).c_str(), nullptr, 10);
  size_t space = spec.find(' ');
  char fill = space == std::string_view::npos || space + 1 >= spec.size() ? 'v' : spec[space + 1];
  std::string value(size, fill);
  for (size_t i = 0; i < size; i += 4096) value[i] = static_cast<char>('a' + (i / 4096) % 26);
  return value;
}

// Input "KEY\nSPEC": saves a value made from SPEC under KEY (a C string: the
// key ends at its first NUL, as the ABI says). Answers "rc=N hash=H".
std::string Save(std::string_view input) {
  size_t newline = input.find('\n');
  std::string key(input.substr(0, newline));
  std::string value = MakeValue(newline == std::string_view::npos ? "" : input.substr(newline + 1));
  int rc = Api().save_state(Api().host_context, key.c_str(), value.data(), value.size());
  return Result(rc) + " hash=" + Hash(value);
}

// Input KEY: "rc=N size=S hash=H" of what load_state hands back.
std::string Load(std::string_view input) {
  std::string key(input);
  std::string bytes;
  relib_buffer out{&bytes, [](relib_buffer* self, const void* data, size_t len) noexcept -> int {
                     static_cast<std::string*>(self->host_context)->append(static_cast<const char*>(data), len);
                     return RELIB_OK;
                   }};
  int rc = Api().load_state(Api().host_context, key.c_str(), &out);
  return Result(rc) + " size=" + std::to_string(bytes.size()) + " hash=" + Hash(bytes);
}

// Input N: saves "v" under a key of N 'k' bytes, then loads it back.
std::string LongKey(std::string_view input) {
  std::string key(std::strtoull(std::string(input).c_str(), nullptr, 10), 'k');
  std::string saved = Result(Api().save_state(Api().host_context, key.c_str(), "v", 1));
  return "save " + saved + "; load " + Load(key);
}

// Keys with a NUL inside, through the C++ SDK: "a\0b" and "a\0c" must not
// both name the key "a".
std::string SdkNulKey(std::string_view) {
  relib::Host host = relib::ThisHost();
  bool saved = host.SaveState(std::string("a\0b", 3), "first");
  std::optional<std::string> other = host.LoadState(std::string("a\0c", 3));
  std::optional<std::string> plain = host.LoadState("a");
  bool stored = host.StoreFd(std::string("f\0x", 3), 0);
  int taken = host.TakeFd(std::string("f\0y", 3));
  if (taken >= 0) ::close(taken);
  return std::string("save=") + (saved ? "true" : "false") + " other=" + other.value_or("<none>") +
         " plain=" + plain.value_or("<none>") + " store=" + (stored ? "true" : "false") +
         " take=" + std::to_string(taken);
}

// Null pointers with non-zero lengths, and null keys: each must be an error.
std::string NullPointers(std::string_view) {
  const relib_host_api& api = Api();
  std::string out;
  out += "save_null_data " + Result(api.save_state(api.host_context, "k", nullptr, 16)) + "\n";
  out += "save_null_key " + Result(api.save_state(api.host_context, nullptr, "v", 1)) + "\n";
  out += "save_empty " + Result(api.save_state(api.host_context, "empty", nullptr, 0)) + "\n";
  out += "load_null_key " + Result(api.load_state(api.host_context, nullptr, nullptr)) + "\n";
  out += "load_null_out " + Result(api.load_state(api.host_context, "k", nullptr)) + "\n";
  out += "store_null_key " + Result(api.store_fd(api.host_context, nullptr, 0)) + "\n";
  out += "take_null_key " + std::to_string(api.take_fd(api.host_context, nullptr)) + "\n";
  api.log(api.host_context, RELIB_LOG_INFO, nullptr, 16);
  api.log(api.host_context, RELIB_LOG_INFO, nullptr, 0);
  api.log(api.host_context, 1000, "level out of range", 18);
  out += "log_null survived";
  return out;
}

// Logs the input verbatim (any bytes) at info level.
std::string Log(std::string_view input) {
  Api().log(Api().host_context, RELIB_LOG_INFO, input.data(), input.size());
  return "logged " + std::to_string(input.size());
}

// Input "-1", "closed" or "pipe": store_fd of that fd under key "fd".
std::string StoreFd(std::string_view input) {
  int fd = -1;
  int spare = -1;
  if (input == "closed") {
    fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ::close(fd);
  } else if (input == "pipe") {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw relib::Error("pipe failed");
    fd = fds[0];
    spare = fds[1];
  } else {
    fd = std::atoi(std::string(input).c_str());
  }
  int rc = Api().store_fd(Api().host_context, "fd", fd);
  if (input == "pipe") {
    ::close(fd);
    ::close(spare);
  }
  return Result(rc);
}

// Input "KEY PATH": PATH opened read-only and stored under KEY.
std::string StorePath(std::string_view input) {
  const std::string line(input);
  const size_t space = line.find(' ');
  if (space == std::string::npos) throw relib::Error("want KEY PATH");
  int fd = ::open(line.substr(space + 1).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw relib::Error("open failed");
  int rc = Api().store_fd(Api().host_context, line.substr(0, space).c_str(), fd);
  ::close(fd);
  return Result(rc);
}

// Input KEY: the path of the fd take_fd gives for KEY, or its error.
std::string TakePath(std::string_view input) {
  int fd = Api().take_fd(Api().host_context, std::string(input).c_str());
  if (fd < 0) return std::to_string(fd);
  char link[256] = {};
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof(link) - 1);
  ::close(fd);
  return n > 0 ? std::string(link, n) : "unreadable";
}

// Lets the worker open exactly one more fd (its soft RLIMIT_NOFILE just past
// its lowest free fd); "off" gives the soft limit back. The module's way to
// fill the worker's fd table without holding hundreds of fds.
std::string OneMoreFd(std::string_view input) {
  static rlimit saved{};
  if (input == "off") return ::setrlimit(RLIMIT_NOFILE, &saved) == 0 ? "restored" : "failed";
  if (::getrlimit(RLIMIT_NOFILE, &saved) != 0) throw relib::Error("getrlimit failed");
  int lowest = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (lowest < 0) throw relib::Error("open failed");
  ::close(lowest);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest) + 1;
  return ::setrlimit(RLIMIT_NOFILE, &tight) == 0 ? std::to_string(lowest) : "failed";
}

// Input KEY: take_fd's answer ("-1", or "ok" for a valid fd, closed again).
std::string TakeFd(std::string_view input) {
  int fd = Api().take_fd(Api().host_context, std::string(input).c_str());
  if (fd < 0) return std::to_string(fd);
  bool valid = ::fcntl(fd, F_GETFD) >= 0;
  ::close(fd);
  return valid ? "ok" : "invalid";
}

// Input N: store_fd of stdin's duplicate under a key of N bytes, then take_fd.
std::string LongFdKey(std::string_view input) {
  std::string key(std::strtoull(std::string(input).c_str(), nullptr, 10), 'f');
  std::string stored = Result(Api().store_fd(Api().host_context, key.c_str(), 0));
  return "store " + stored + "; take " + TakeFd(key);
}

// Input N: stores fd 0 under N distinct keys; "stored S; then rc=... error=..."
// for the first refusal.
std::string StoreMany(std::string_view input) {
  int count = std::atoi(std::string(input).c_str());
  int stored = 0;
  for (int i = 0; i < count; ++i) {
    std::string key = "many-" + std::to_string(i);
    int rc = Api().store_fd(Api().host_context, key.c_str(), 0);
    if (rc != RELIB_OK) return "stored " + std::to_string(stored) + "; then " + Result(rc);
    ++stored;
  }
  return "stored " + std::to_string(stored);
}

// Saves (like Save), then dies at once if the save succeeded: a value the
// host acknowledged must survive a worker that is gone a moment later.
std::string SaveThenDie(std::string_view input) {
  std::string result = Save(input);
  if (result.rfind("rc=0 ", 0) == 0) ::kill(::getpid(), SIGKILL);
  return result;
}

// A save from a module thread while the worker is idle between commands.
std::atomic<int> background_rc{-100};
std::string SaveInBackground(std::string_view input) {
  background_rc = -100;
  std::string spec(input);
  std::thread([spec] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::string value = MakeValue(spec);
    background_rc = Api().save_state(Api().host_context, "background", value.data(), value.size());
  }).detach();
  return "started";
}
std::string BackgroundResult(std::string_view) { return std::to_string(background_rc.load()); }

std::string Crash(std::string_view) {
  ::raise(SIGSEGV);
  return "unreachable";
}

std::string Ping(std::string_view) { return "pong"; }

}  // namespace

RELIB_MODULE("host_api", nullptr, nullptr, relib::Export<Save>("save"), relib::Export<Load>("load"),
             relib::Export<LongKey>("long_key"), relib::Export<SdkNulKey>("sdk_nul_key"),
             relib::Export<NullPointers>("null_pointers"), relib::Export<Log>("log"),
             relib::Export<StoreFd>("store_fd"), relib::Export<TakeFd>("take_fd"),
             relib::Export<LongFdKey>("long_fd_key"),
             relib::Export<StoreMany>("store_many"), relib::Export<SaveThenDie>("save_then_die"),
             relib::Export<SaveInBackground>("save_in_background"),
             relib::Export<BackgroundResult>("background_result"), relib::Export<Crash>("crash"),
             relib::Export<Ping>("ping"), relib::Export<StorePath>("store_path"),
             relib::Export<TakePath>("take_path"), relib::Export<OneMoreFd>("one_more_fd"));
