// Test module built several times: VERSION=1 and VERSION=2 prove that a
// reload really changes behaviour; the variants (CRASH_ON_LOAD, HANG_ON_LOAD,
// CRASH_BEFORE_UNLOAD, HANG_BEFORE_UNLOAD, FAIL_SELF_TEST) misbehave in one
// phase each. Exports fail, crash, abort, exit, hang and deadlock on request,
// and save/load state through the host.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <string>
#include <string_view>

#include "relib/module.hpp"

#ifndef VERSION
#error "VERSION must be defined"
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

namespace {

int calls = 0;

std::string Version(std::string_view) { return "v" STR(VERSION); }
std::string Echo(std::string_view input) { return std::string(input); }
std::string Count(std::string_view) { return std::to_string(++calls); }
std::string Fail(std::string_view input) { throw relib::Error("asked to fail: " + std::string(input)); }
std::string Crash(std::string_view) {
  ::raise(SIGSEGV);
  return "unreachable";
}
std::string Hang(std::string_view) {
  for (;;) ::pause();
}
std::string Exit(std::string_view) { ::_exit(3); }
std::string Abort(std::string_view) { std::abort(); }
pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
std::string Deadlock(std::string_view) {
  pthread_mutex_lock(&mutex);
  pthread_mutex_lock(&mutex);  // a normal mutex locked twice: blocks forever
  return "unreachable";
}
std::string Save(std::string_view input) {
  if (!relib::ThisHost().SaveState("saved", input)) throw relib::Error("save_state failed");
  return "saved";
}
std::string Load(std::string_view) { return relib::ThisHost().LoadState("saved").value_or("<none>"); }
std::string Farewell(std::string_view) { return relib::ThisHost().LoadState("farewell").value_or("<none>"); }
std::string SelfTest(std::string_view) {
#ifdef FAIL_SELF_TEST
  throw relib::Error("self test: database schema too new");
#else
  return "ok";
#endif
}

void OnLoad(relib::Host host) {
  host.Info("versioned v" STR(VERSION) " loaded");
  // Lets a test make the restore of a good version crash, through its state.
  if (host.LoadState("saved") == "crash-on-load") ::raise(SIGSEGV);
#ifdef CRASH_ON_LOAD
  ::raise(SIGSEGV);
#endif
#ifdef HANG_ON_LOAD
  for (;;) ::pause();
#endif
}

void BeforeUnload() {
  relib::ThisHost().SaveState("farewell", "from v" STR(VERSION));  // the last checkpoint
#ifdef CRASH_BEFORE_UNLOAD
  ::raise(SIGSEGV);
#endif
#ifdef HANG_BEFORE_UNLOAD
  for (volatile int spin = 0;; spin = spin + 1) {
  }
#endif
}

}  // namespace

RELIB_MODULE("versioned", OnLoad, BeforeUnload, relib::Export<Version>("version"), relib::Export<Echo>("echo"),
             relib::Export<Count>("count"), relib::Export<Fail>("fail"), relib::Export<Crash>("crash"),
             relib::Export<Hang>("hang"), relib::Export<Exit>("exit"), relib::Export<Abort>("abort"),
             relib::Export<Deadlock>("deadlock"), relib::Export<Save>("save"), relib::Export<Load>("load"), relib::Export<Farewell>("farewell"),
             relib::Export<SelfTest>("self_test"));
