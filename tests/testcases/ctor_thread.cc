// A module that fails after dlopen (its descriptor claims an ABI version the
// worker does not speak), and whose static constructor starts a thread that
// never stops: the failed load must not unmap code that thread runs. (A
// library without any descriptor is refused before dlopen, so its
// constructors never run: see module_file_test.)
#include <unistd.h>

#include <thread>

#include "relib/module.h"

namespace {
struct Starter {
  Starter() {
    std::thread([] {
      for (;;) ::usleep(10000);
    }).detach();
  }
} starter;
}  // namespace

extern "C" __attribute__((visibility("default"))) const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {
    RELIB_ABI_VERSION + 98, "ctor-thread", nullptr, nullptr, nullptr, 0,
};
