// The module side of relib's own test scenarios (xxshady/relib, testing/module),
// written fresh for relibd's byte-in/byte-out exports. Each export names the
// relib scenario it serves. Built twice: plain, and with
// BEFORE_UNLOAD_THROWS (scenario before_unload_panic).
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "relib/module.hpp"

namespace {

constexpr size_t k200MiB = 200u << 20;

std::string Bytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

// --- unloading (testing/module/src/unloading.rs, shared.rs) ---

// Like relib's main: touch 200 MiB once and start one thread, so the first
// per-thread caches exist before anything is measured.
void OnLoad(relib::Host host) {
  {
    std::vector<uint8_t> ones(k200MiB, 1);
    if (ones[k200MiB - 1] != 1) throw relib::Error("bad memory");
  }
  std::thread([] {}).join();
  host.Info("relib scenarios module loaded");
}

void BeforeUnload() {
  relib::ThisHost().Debug("before_unload");
#ifdef BEFORE_UNLOAD_THROWS
  throw relib::Error("before_unload panicked on purpose");
#endif
}

std::string Echo(std::string_view in) { return std::string(in); }
std::string Tail(std::string_view in) { return std::string(in.empty() ? in : in.substr(1)); }
std::string CheckOnes(std::string_view in) {
  if (in != std::string(100, '1')) throw relib::Error("expected 100 x '1'");
  return "ok";
}
std::string I32MaxIn(std::string_view in) {
  int32_t value;
  if (in.size() != sizeof(value)) throw relib::Error("expected 4 bytes");
  std::memcpy(&value, in.data(), sizeof(value));
  if (value != INT32_MAX) throw relib::Error("expected INT32_MAX");
  return "ok";
}
std::string I32MinRoundtrip(std::string_view in) {
  int32_t value;
  if (in.size() != sizeof(value)) throw relib::Error("expected 4 bytes");
  std::memcpy(&value, in.data(), sizeof(value));
  if (value != INT32_MIN) throw relib::Error("expected INT32_MIN");
  return Bytes(&value, sizeof(value));
}

char marker_path[256];
std::atomic<bool> other_thread_dtor_ran{false};

struct MarksOnDestruction {
  std::vector<uint8_t> data;
  ~MarksOnDestruction() {
    if (marker_path[0] == '\0' || data.empty()) return;
    if (FILE* f = std::fopen(marker_path, "a")) {
      std::fputs("tls-dtor;", f);
      std::fclose(f);
    }
  }
};
struct SetsFlagOnDestruction {
  std::vector<uint8_t> data;
  ~SetsFlagOnDestruction() {
    if (!data.empty()) other_thread_dtor_ran = true;
  }
};
thread_local MarksOnDestruction tls_first;
thread_local std::vector<uint8_t> tls_second;
thread_local std::vector<uint8_t> tls_third;
thread_local SetsFlagOnDestruction tls_other;

// Three 200 MiB thread-locals on the calling thread (the first one's
// destructor leaves a mark in the file named by `in`), and a fourth on a
// thread of its own whose destructor must have run once it is joined.
std::string ThreadLocals(std::string_view in) {
  size_t n = std::min(in.size(), sizeof(marker_path) - 1);
  std::memcpy(marker_path, in.data(), n);
  marker_path[n] = '\0';
  tls_first.data.assign(k200MiB, 1);
  tls_second.assign(k200MiB, 2);
  tls_third.assign(k200MiB, 3);
  if (tls_first.data.size() != k200MiB || tls_second.size() != k200MiB || tls_third.size() != k200MiB) {
    throw relib::Error("thread-local sizes");
  }
  other_thread_dtor_ran = false;
  std::thread([] { tls_other.data.assign(k200MiB, 4); }).join();
  if (!other_thread_dtor_ran) throw relib::Error("thread-local destructor did not run at thread exit");
  return "ok";
}

std::string AllocMem(std::string_view) { return std::string(k200MiB, '\1'); }

std::string Leak(std::string_view) {
  auto* leaked = new std::vector<uint8_t>(k200MiB, 1);
  return std::to_string(leaked->size());
}

// relib's call_imports, with relibd's host API.
std::string CallHost(std::string_view) {
  relib::Host host = relib::ThisHost();
  host.Debug("debug");
  host.Info("info");
  host.Warn("warn");
  host.Error("error");
  std::string ones(100, '1');
  if (!host.SaveState("ones", ones)) throw relib::Error("save_state failed");
  if (host.LoadState("ones") != ones) throw relib::Error("load_state returned something else");
  if (host.LoadState("never saved").has_value()) throw relib::Error("load_state of a missing key");
  return "ok";
}

bool called = false;
std::string OnlyCalledOnce(std::string_view) {
  bool first = !called;
  called = true;
  return first ? "1" : "0";
}

// --- exportify variants (testing/module/src/exportify.rs) ---
std::string MainDefault(std::string_view) { return ""; }
std::string MainRetPrimitive(std::string_view) {
  uint64_t value = UINT64_MAX;
  return Bytes(&value, sizeof(value));
}
std::string MainRetHeap(std::string_view) { return std::string("ret_heap_main"); }
std::string MainPanic(std::string_view) { throw std::runtime_error("main panicked on purpose"); }

// --- threads_check (testing/module/src/threads_check.rs) ---
std::string SpawnSleeper(std::string_view) {
  std::thread([] { std::this_thread::sleep_for(std::chrono::seconds(1000000)); }).detach();
  return "started";
}

// --- multiple_modules (testing/module/src/multiple_modules.rs) ---
std::string Tid(std::string_view) { return std::to_string(::syscall(SYS_gettid)); }

// --- panic_in_interface_module (testing/module/src/panic_in_interface.rs) ---
std::string Panic(std::string_view) { throw std::runtime_error("expected panic"); }

// --- windows_background_threads, its Linux analogue: threads that wait until joined ---
std::mutex parked_mutex;
std::condition_variable parked_wakeup;
bool release = false;
std::vector<std::thread> parked;
std::string SpawnParked(std::string_view in) {
  int count = std::stoi(std::string(in));
  std::lock_guard<std::mutex> lock(parked_mutex);
  release = false;
  for (int i = 0; i < count; ++i) {
    parked.emplace_back([] {
      std::unique_lock<std::mutex> wait(parked_mutex);
      parked_wakeup.wait(wait, [] { return release; });
    });
  }
  return "parked";
}
std::string JoinParked(std::string_view) {
  {
    std::lock_guard<std::mutex> lock(parked_mutex);
    release = true;
  }
  parked_wakeup.notify_all();
  for (auto& thread : parked) thread.join();
  parked.clear();
  return "joined";
}

}  // namespace

RELIB_MODULE("relib-scenarios", OnLoad, BeforeUnload, relib::Export<Echo>("echo"), relib::Export<Tail>("tail"),
             relib::Export<CheckOnes>("check_ones"), relib::Export<I32MaxIn>("i32_max_in"),
             relib::Export<I32MinRoundtrip>("i32_min_roundtrip"), relib::Export<ThreadLocals>("thread_locals"),
             relib::Export<AllocMem>("alloc_mem"), relib::Export<Leak>("leak"),
             relib::Export<CallHost>("call_host"), relib::Export<OnlyCalledOnce>("only_called_once"),
             relib::Export<MainDefault>("main_default"), relib::Export<MainRetPrimitive>("main_ret_primitive"),
             relib::Export<MainRetHeap>("main_ret_heap"), relib::Export<MainPanic>("main_panic"),
             relib::Export<SpawnSleeper>("spawn_sleeper"), relib::Export<Tid>("tid"), relib::Export<Panic>("panic"),
             relib::Export<SpawnParked>("spawn_parked"), relib::Export<JoinParked>("join_parked"));
