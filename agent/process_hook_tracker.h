// Hooks libc and libstdc++ keep for the whole process that can hold a module's
// function: the C++ terminate and new handlers, libc's error/argp/obstack
// hook variables, printf specifiers (register_printf_specifier) and FILE
// streams whose I/O functions are the module's (fopencookie; glibc flushes and
// closes every open stream at exit). The worker defines
// register_printf_specifier, register_printf_function, fopencookie and
// fclose; the handler variables are read at unload.
#ifndef RELIB_AGENT_PROCESS_HOOK_TRACKER_H_
#define RELIB_AGENT_PROCESS_HOOK_TRACKER_H_

#include <cstdint>
#include <vector>

#include "agent/code_reference.h"
#include "agent/module_context.h"

namespace relib::agent::hooks {

// Remembers the host's own handlers (call once, before any module loads).
void SnapshotHost();

// Closes `id`'s cookie streams (in module scope: their close functions run
// while the code is mapped) and unregisters its printf specifiers.
std::vector<CodeReference> ReleaseAll(ModuleId id);

// The last guard before dlclose: every handler variable pointing into
// [start, end) is reset to the host's value.
std::vector<CodeReference> ResetInto(uintptr_t start, uintptr_t end);

}  // namespace relib::agent::hooks

#endif  // RELIB_AGENT_PROCESS_HOOK_TRACKER_H_
