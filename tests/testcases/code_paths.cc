// A module that leaves every kind of path back into its code in process-wide
// state: signal handlers (sigaction, signal, raw rt_sigaction), a SIGEV_THREAD
// timer, exit handlers glibc would run at exit (on_exit, __cxa_atexit with a
// null dso handle), fork handlers registered without a dso handle, the C++
// terminate and new handlers, a fopencookie FILE whose buffered data glibc
// flushes at exit, and a printf specifier. Loaded a second time under another
// name it probes the process after the first copy is gone (`fork`,
// `terminate_owner`, `printf_w`).
#include <dlfcn.h>
#include <fcntl.h>
#include <printf.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <string_view>

#include "relib/module.hpp"

extern "C" int __register_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void), void* dso);
extern "C" int __cxa_atexit(void (*fn)(void*), void* arg, void* dso);

namespace {

std::atomic<int> signals_seen{0};
std::atomic<int> ticks{0};
char marker_path[256];

void OnSignal(int) { signals_seen.fetch_add(1); }

void WriteMarker(const char* what) {
  if (marker_path[0] == '\0') return;
  int fd = ::open(marker_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ::write(fd, what, std::strlen(what));
  ::close(fd);
}

void SetMarker(std::string_view path) {
  size_t n = std::min(path.size(), sizeof(marker_path) - 1);
  std::memcpy(marker_path, path.data(), n);
  marker_path[n] = '\0';
}

std::string Sigaction(std::string_view) {
  struct sigaction action {};
  action.sa_handler = &OnSignal;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGWINCH, &action, nullptr) != 0) throw relib::Error("sigaction failed");
  return "installed";
}

// sigaction with the new and the old disposition in one struct, as POSIX allows.
std::string SigactionAliased(std::string_view) {
  struct sigaction action {};
  action.sa_handler = &OnSignal;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGWINCH, &action, &action) != 0) throw relib::Error("sigaction failed");
  return "installed";
}

std::string Signal(std::string_view) {
  if (::signal(SIGURG, &OnSignal) == SIG_ERR) throw relib::Error("signal failed");
  return "installed";
}

// The kernel's struct sigaction, set with the raw system call so no library
// function sees it.
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  uint64_t mask;
};

std::string RawSigaction(std::string_view) {
  KernelSigaction action{&OnSignal, 0x04000000 /* SA_RESTORER */, nullptr, 0};
  // Borrow libc's restorer so a delivery while loaded returns properly.
  KernelSigaction current{};
  ::syscall(SYS_rt_sigaction, SIGSEGV, nullptr, &current, sizeof(uint64_t));
  action.restorer = current.restorer;
  if (::syscall(SYS_rt_sigaction, SIGCONT, &action, nullptr, sizeof(uint64_t)) != 0) {
    throw relib::Error("rt_sigaction failed");
  }
  return "installed";
}

// The same behind the agent's back on a realtime signal: the kernel's
// per-process summary in /proc/PID/stat shows only signals 1-31.
std::string RawRtSigaction(std::string_view) {
  KernelSigaction action{&OnSignal, 0x04000000 /* SA_RESTORER */, nullptr, 0};
  KernelSigaction current{};
  ::syscall(SYS_rt_sigaction, SIGSEGV, nullptr, &current, sizeof(uint64_t));
  action.restorer = current.restorer;
  if (::syscall(SYS_rt_sigaction, SIGRTMIN + 1, &action, nullptr, sizeof(uint64_t)) != 0) {
    throw relib::Error("rt_sigaction failed");
  }
  return "installed";
}

std::string SignalsSeen(std::string_view) { return std::to_string(signals_seen.load()); }

void OnTick(sigval) { ticks.fetch_add(1); }

std::string Timer(std::string_view) {
  sigevent event{};
  event.sigev_notify = SIGEV_THREAD;
  event.sigev_notify_function = &OnTick;
  timer_t timer;
  if (::timer_create(CLOCK_MONOTONIC, &event, &timer) != 0) throw relib::Error("timer_create failed");
  itimerspec every{{0, 5'000'000}, {0, 5'000'000}};
  if (::timer_settime(timer, 0, &every, nullptr) != 0) throw relib::Error("timer_settime failed");
  return "armed";
}

std::string Ticks(std::string_view) { return std::to_string(ticks.load()); }

void OnExitHandler(int, void*) { WriteMarker("on_exit;"); }
void CxaHandler(void*) { WriteMarker("cxa_atexit;"); }

std::string ExitHandlers(std::string_view marker) {
  SetMarker(marker);
  if (::on_exit(&OnExitHandler, nullptr) != 0) throw relib::Error("on_exit failed");
  if (__cxa_atexit(&CxaHandler, nullptr, nullptr) != 0) throw relib::Error("__cxa_atexit failed");
  return "registered";
}

void Prepare() { WriteMarker("prepare;"); }
void Parent() {}
void Child() {}

std::string Atfork(std::string_view) {
  // A null dso handle is what binaries built against older glibc pass (their
  // pthread_atfork lived in libpthread): glibc never drops these at dlclose.
  if (__register_atfork(&Prepare, &Parent, &Child, nullptr) != 0) throw relib::Error("__register_atfork failed");
  return "registered";
}

std::string Fork(std::string_view) {
  pid_t child = ::fork();
  if (child < 0) throw relib::Error("fork failed");
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return "forked";
}

void OnTerminate() { std::abort(); }
void OnNoMemory() { throw std::bad_alloc(); }

std::string Handlers(std::string_view) {
  std::set_terminate(&OnTerminate);
  std::set_new_handler(&OnNoMemory);
  return "set";
}

std::string Where(const void* address) {
  Dl_info info;
  if (address == nullptr) return "none";
  if (::dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "unmapped";
  std::string file = info.dli_fname;
  return file.substr(file.rfind('/') + 1);
}

std::string HandlerOwners(std::string_view) {
  return Where(reinterpret_cast<const void*>(std::get_terminate())) + " " +
         Where(reinterpret_cast<const void*>(std::get_new_handler()));
}

ssize_t CookieWrite(void*, const char*, size_t size) {
  WriteMarker("cookie-write;");
  return static_cast<ssize_t>(size);
}

std::string Cookie(std::string_view marker) {
  SetMarker(marker);
  cookie_io_functions_t functions{};
  functions.write = &CookieWrite;
  FILE* file = ::fopencookie(nullptr, "w", functions);
  if (file == nullptr) throw relib::Error("fopencookie failed");
  std::fputs("buffered until exit", file);  // left open: glibc flushes it at exit
  return "opened";
}

int PrintW(FILE* stream, const printf_info*, const void* const*) { return std::fputs("<W>", stream) >= 0 ? 3 : -1; }
int PrintWArgs(const printf_info*, size_t n, int* types, int*) {
  if (n > 0) types[0] = PA_INT;
  return 1;
}

std::string RegisterPrintf(std::string_view) {
  if (::register_printf_specifier('W', &PrintW, &PrintWArgs) != 0) throw relib::Error("register_printf_specifier failed");
  return "registered";
}

std::string PrintfW(std::string_view) {
  char text[64];
  std::snprintf(text, sizeof(text), "[%W]", 7);
  return text;
}

}  // namespace

RELIB_MODULE("code-paths", nullptr, nullptr, relib::Export<Sigaction>("sigaction"), relib::Export<Signal>("signal"),
             relib::Export<SigactionAliased>("sigaction_aliased"),
             relib::Export<RawSigaction>("raw_sigaction"), relib::Export<RawRtSigaction>("raw_rt_sigaction"), relib::Export<SignalsSeen>("signals_seen"),
             relib::Export<Timer>("timer"), relib::Export<Ticks>("ticks"),
             relib::Export<ExitHandlers>("exit_handlers"), relib::Export<Atfork>("atfork"),
             relib::Export<Fork>("fork"), relib::Export<Handlers>("handlers"),
             relib::Export<HandlerOwners>("handler_owners"), relib::Export<Cookie>("cookie"),
             relib::Export<RegisterPrintf>("register_printf"), relib::Export<PrintfW>("printf_w"));
