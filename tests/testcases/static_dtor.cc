// A module with 500 static objects whose destructors run at its dlclose
// (500 __cxa_atexit registrations with the module's dso handle per load);
// the first one appends a byte to the file named by $RELIB_TEST_DTOR_LOG
// when set, so a test can count the versions whose destructors ran.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "relib/module.hpp"

namespace {

volatile int destroyed = 0;

struct Logged {
  ~Logged() {
    const char* log = std::getenv("RELIB_TEST_DTOR_LOG");
    if (log == nullptr) return;
    int fd = ::open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    [[maybe_unused]] ssize_t written = ::write(fd, "d", 1);
    ::close(fd);
  }
};
Logged logged;

struct Counted {
  ~Counted() { destroyed = destroyed + 1; }
};
#define RELIB_COUNTED_1(n) Counted counted_##n;
#define RELIB_COUNTED_10(n)                                                                                \
  RELIB_COUNTED_1(n##0) RELIB_COUNTED_1(n##1) RELIB_COUNTED_1(n##2) RELIB_COUNTED_1(n##3) RELIB_COUNTED_1(n##4) \
  RELIB_COUNTED_1(n##5) RELIB_COUNTED_1(n##6) RELIB_COUNTED_1(n##7) RELIB_COUNTED_1(n##8) RELIB_COUNTED_1(n##9)
#define RELIB_COUNTED_100(n)                                                                                    \
  RELIB_COUNTED_10(n##0) RELIB_COUNTED_10(n##1) RELIB_COUNTED_10(n##2) RELIB_COUNTED_10(n##3)                    \
  RELIB_COUNTED_10(n##4) RELIB_COUNTED_10(n##5) RELIB_COUNTED_10(n##6) RELIB_COUNTED_10(n##7)                    \
  RELIB_COUNTED_10(n##8) RELIB_COUNTED_10(n##9)
RELIB_COUNTED_100(a)
RELIB_COUNTED_100(b)
RELIB_COUNTED_100(c)
RELIB_COUNTED_100(d)
RELIB_COUNTED_100(e)

[[maybe_unused]] std::string Destroyed(std::string_view) { return std::to_string(destroyed); }

}  // namespace

#ifdef RELIB_TEST_WRONG_ABI
// The same module built for an ABI version no worker speaks: its static
// constructors run at dlopen, before the worker reads the descriptor and
// refuses the module (the discard path of a version whose exit
// registrations were held).
extern "C" __attribute__((visibility("default")))
const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {RELIB_ABI_VERSION + 98, "static_dtor", {}, {}, {}, {}, {}};
#else
RELIB_MODULE("static_dtor", nullptr, nullptr, relib::Export<Destroyed>("destroyed"));
#endif
