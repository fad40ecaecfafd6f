#include "agent/crash_note.h"

namespace relib::agent::internal {

constinit thread_local const char* crash_note __attribute__((tls_model("local-exec"))) = nullptr;

}  // namespace relib::agent::internal
