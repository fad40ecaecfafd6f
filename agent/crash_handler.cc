#include "agent/crash_handler.h"

#include <signal.h>

#include <atomic>

#include "agent/crash_note.h"
#include "agent/module_context.h"

namespace relib::agent {
namespace {

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

// Read by the handler, which can be handed no context.
std::atomic<common::FlightRecord*> crash_record{nullptr};

void OnFatalSignal(int signal) {
  common::FlightRecorder::RecordCrash(crash_record.load(std::memory_order_acquire), signal,
                                      ModuleName(CurrentModule()), CrashNote());
  ::raise(signal);  // SA_RESETHAND restored the default; delivered on return
}

}  // namespace

ScopedCrashHandler::ScopedCrashHandler(common::FlightRecord* record) {
  crash_record.store(record, std::memory_order_release);
  struct sigaction action {};
  action.sa_handler = &OnFatalSignal;
  // SA_ONSTACK: on an overflowed stack the handler could not even be entered.
  action.sa_flags = SA_RESETHAND | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  for (int signal : kFatalSignals) ::sigaction(signal, &action, nullptr);
}

ScopedCrashHandler::~ScopedCrashHandler() {
  crash_record.store(nullptr, std::memory_order_release);
  struct sigaction action {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  for (int signal : kFatalSignals) ::sigaction(signal, &action, nullptr);
}

}  // namespace relib::agent
