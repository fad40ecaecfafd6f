// Not a relib module, and its static constructor starts a thread that never
// stops: the failed load must not unmap code that thread runs.
#include <unistd.h>

#include <thread>

namespace {
struct Starter {
  Starter() {
    std::thread([] {
      for (;;) ::usleep(10000);
    }).detach();
  }
} starter;
}  // namespace

extern "C" __attribute__((visibility("default"))) int not_a_module() { return 0; }
