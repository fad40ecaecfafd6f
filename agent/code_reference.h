// A path back into a module's code found in process-wide state at unload
// (a signal handler, a timer, an exit handler, ...) and what was done with it.
#ifndef RELIB_AGENT_CODE_REFERENCE_H_
#define RELIB_AGENT_CODE_REFERENCE_H_

#include <string>

namespace relib::agent {

struct CodeReference {
  std::string kind;         // "signal handler", "timer", "exit handler", ...
  std::string description;  // "SIGWINCH -> code_paths.so+0x1234"
  std::string action;       // "restored", "deleted", "ran", "discarded", "unregistered", "reset", "closed", "refused"
};

}  // namespace relib::agent

#endif  // RELIB_AGENT_CODE_REFERENCE_H_
