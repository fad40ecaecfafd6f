#include "agent/crash_handler.h"

#include <signal.h>
#include <ucontext.h>

#include <atomic>

#include "agent/crash_note.h"
#include "agent/heap_tracker.h"
#include "agent/module_context.h"

namespace relib::agent {
namespace {

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

// Read by the handler, which can be handed no context.
std::atomic<common::FlightRecord*> crash_record{nullptr};

// The address of the instruction that faulted, or nullptr where unknown.
const void* FaultingPc(void* context) {
#if defined(__x86_64__)
  return reinterpret_cast<const void*>(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RIP]);
#else
  return nullptr;
#endif
}

void OnFatalSignal(int signal, siginfo_t*, void* context) {
  const char* note = CrashNote();
  // free's inline path leaves no note before the loads that may fault: the
  // heap tracker knows them by address.
  if (note == nullptr && (signal == SIGSEGV || signal == SIGBUS)) note = heap::FaultNote(FaultingPc(context));
  common::FlightRecorder::RecordCrash(crash_record.load(std::memory_order_acquire), signal,
                                      ModuleName(CurrentModule()), note);
  ::raise(signal);  // SA_RESETHAND restored the default; delivered on return
}

}  // namespace

ScopedCrashHandler::ScopedCrashHandler(common::FlightRecord* record) {
  crash_record.store(record, std::memory_order_release);
  struct sigaction action {};
  action.sa_sigaction = &OnFatalSignal;
  // SA_ONSTACK: on an overflowed stack the handler could not even be entered.
  action.sa_flags = SA_RESETHAND | SA_ONSTACK | SA_SIGINFO;
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
