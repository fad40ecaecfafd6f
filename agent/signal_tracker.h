// Signal dispositions set by module code. The worker defines sigaction,
// signal, bsd_signal, sysv_signal and sigset; a disposition set in module
// scope, or whose handler lies in a module, is recorded on a per-signal stack
// above what it replaced. At unload the module's entries are removed and the
// signal gets back the newest disposition still owned by the host or a module
// that is still loaded — so no handler ever points into unmapped code, and a
// handler that chained to an unloaded one is not resurrected.
#ifndef RELIB_AGENT_SIGNAL_TRACKER_H_
#define RELIB_AGENT_SIGNAL_TRACKER_H_

#include <cstdint>
#include <vector>

#include "agent/code_reference.h"
#include "agent/module_context.h"

namespace relib::agent::signals {

// Puts back every signal whose current disposition `id` set; returns one
// "restored" entry per signal. Thread-safe.
std::vector<CodeReference> RestoreAll(ModuleId id);

// The last guard before dlclose: reads every signal's disposition from the
// kernel and returns those whose handler lies in [start, end) and that `id`
// did not set through the trackers (RestoreAll handles those) — set behind
// their back. With `reset`, each is set to the disposition the host had
// before any module touched that signal (SIG_DFL if none is known) and
// reported "reset"; otherwise reported "refused" and left alone.
std::vector<CodeReference> Guard(ModuleId id, uintptr_t start, uintptr_t end, bool reset);

}  // namespace relib::agent::signals

#endif  // RELIB_AGENT_SIGNAL_TRACKER_H_
