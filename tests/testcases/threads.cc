// Threads a module leaves behind, in every shape the thread checks must see.
#include <pthread.h>
#include <threads.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <chrono>
#include <future>
#include <string>
#include <string_view>
#include <thread>

#include "relib/module.hpp"

namespace {

std::atomic<bool> stop{false};

void* ForeverLoop(void*) {
  pthread_setname_np(pthread_self(), "forever");
  for (;;) ::usleep(10000);
  return nullptr;
}

// Runs until before_unload, then lingers 100 ms and leaves through pthread_exit.
void* StoppingLoop(void*) {
  pthread_setname_np(pthread_self(), "stopping");
  while (!stop) ::usleep(5000);
  ::usleep(100000);
  pthread_exit(nullptr);
}

// Its destructor runs after the thread's start routine has returned.
struct SlowToDie {
  ~SlowToDie() { ::usleep(300000); }
};
thread_local SlowToDie slow;

std::string Detached(void* (*routine)(void*)) {
  pthread_t thread;
  if (pthread_create(&thread, nullptr, routine, nullptr) != 0) throw relib::Error("pthread_create failed");
  pthread_detach(thread);
  return "started";
}

std::string SpawnForever(std::string_view) { return Detached(&ForeverLoop); }
std::string SpawnStopping(std::string_view) { return Detached(&StoppingLoop); }

// A C11 thread: glibc starts it without calling pthread_create.
int C11Loop(void*) {
  pthread_setname_np(pthread_self(), "c11-forever");
  for (;;) ::usleep(10000);
  return 0;
}
std::string SpawnC11Forever(std::string_view) {
  thrd_t thread;
  if (thrd_create(&thread, &C11Loop, nullptr) != thrd_success) throw relib::Error("thrd_create failed");
  thrd_detach(thread);
  return "started";
}

// A std::thread that starts another thread (nested attribution) and both stop on request.
std::string SpawnNested(std::string_view) {
  std::thread([] {
    std::thread inner([] {
      while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    });
    inner.join();
  }).detach();
  return "started";
}

// std::async with a task that keeps running until before_unload.
std::future<void> pending;
std::string SpawnAsync(std::string_view) {
  pending = std::async(std::launch::async, [] {
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  return "started";
}

// A thread whose only lingering work is a thread_local destructor.
std::string SpawnSlowTls(std::string_view) {
  std::thread([] { (void)&slow; }).detach();
  return "started";
}

// std::threads that run until the worker ends: the report must name the
// callable the module passed (the lambda's enclosing function, the named
// function), not libstdc++'s internal trampoline.
void StdThreadBody() {
  pthread_setname_np(pthread_self(), "std-named");
  for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}
std::string SpawnStdNamed(std::string_view) {
  std::thread(&StdThreadBody).detach();
  return "started";
}
std::string SpawnStdLambda(std::string_view) {
  std::thread([] {
    pthread_setname_np(pthread_self(), "std-lambda");
    for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }).detach();
  return "started";
}
// A plain pthread whose argument is not a pointer at all.
void* IntegerArgLoop(void* arg) {
  pthread_setname_np(pthread_self(), "int-arg");
  for (;;) ::usleep(static_cast<useconds_t>(reinterpret_cast<uintptr_t>(arg)));
  return nullptr;
}
std::string SpawnIntegerArg(std::string_view) {
  pthread_t thread;
  if (pthread_create(&thread, nullptr, &IntegerArgLoop, reinterpret_cast<void*>(uintptr_t{10000})) != 0) {
    throw relib::Error("pthread_create failed");
  }
  pthread_detach(thread);
  return "started";
}

std::string Ping(std::string_view) { return "pong"; }

void BeforeUnload() {
  stop = true;
  // The std::async future must not block here forever: only wait if valid.
  if (pending.valid()) pending.wait();
}

}  // namespace

RELIB_MODULE("threads", nullptr, BeforeUnload, relib::Export<SpawnForever>("spawn_forever"),
             relib::Export<SpawnStopping>("spawn_stopping"),
             relib::Export<SpawnC11Forever>("spawn_c11_forever"), relib::Export<SpawnNested>("spawn_nested"),
             relib::Export<SpawnAsync>("spawn_async"), relib::Export<SpawnSlowTls>("spawn_slow_tls"),
             relib::Export<SpawnStdNamed>("spawn_std_named"), relib::Export<SpawnStdLambda>("spawn_std_lambda"),
             relib::Export<SpawnIntegerArg>("spawn_integer_arg"), relib::Export<Ping>("ping"));
