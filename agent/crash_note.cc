#include "agent/crash_note.h"

namespace relib::agent {
namespace {
// initial-exec: written from inside free() without allocating.
thread_local const char* note __attribute__((tls_model("initial-exec"))) = nullptr;
}  // namespace

void SetCrashNote(const char* text) { note = text; }
const char* CrashNote() { return note; }

}  // namespace relib::agent
