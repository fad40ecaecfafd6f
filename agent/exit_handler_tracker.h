// Exit, quick_exit and fork handlers registered from module code without the
// module's dso handle. glibc drops a library's handlers at dlclose only when
// they carry its dso handle (what atexit and pthread_atfork linked into the
// module pass); on_exit, __cxa_atexit(fn, arg, NULL), __cxa_at_quick_exit(fn, NULL) and
// __register_atfork(..., NULL) (what binaries built against older glibc pass)
// survive the unload and call into unmapped code at exit or fork.
//
// The worker defines those functions: a registration without a dso handle made
// in module scope, or whose function lies in a module, is made on glibc's own
// lists under a token that stands for the module. At unload
// __cxa_finalize(token) does exactly what dlclose does for a library's own
// handlers: exit handlers run (newest first, in module scope, while the code
// is still mapped), quick_exit handlers are dropped, fork handlers are
// unregistered. A worker that exits with the module loaded runs its exit
// handlers at exit as usual.
#ifndef RELIB_AGENT_EXIT_HANDLER_TRACKER_H_
#define RELIB_AGENT_EXIT_HANDLER_TRACKER_H_

#include <vector>

#include "agent/code_reference.h"
#include "agent/module_context.h"

namespace relib::agent::exits {

// Runs `id`'s exit handlers and drops its quick_exit and fork handlers; one
// entry per handler ("ran", "discarded", "unregistered").
// REQUIRES: the module is still mapped; called on the unloading thread.
std::vector<CodeReference> Finalize(ModuleId id);

// Drops everything of `id` registered since, without running anything (after
// dlclose: static destructors may have registered more). Returns how many.
int Discard(ModuleId id);

// glibc keeps the exit handlers libraries register with their own dso
// handle (their static destructors) in one list and reuses a freed slot only
// at the list's end. A reload opens the new version before it closes the old
// one, so the new version's entries went in after the old one's, whose slots
// were never used again: 32 bytes and a longer list for every later dlclose
// (and Finalize, Discard) to walk, per reload, for the life of the worker.
// Hold(id): registrations with a dso handle made in `id`'s scope (its static
// constructors, at dlopen) are kept here; Release(id) passes them to glibc,
// in order, once the old version's slots are free (idempotent; also call it
// before `id`'s dlclose on any path, or its static destructors do not run).
// Both from the thread that loads and unloads.
void Hold(ModuleId id);
void Release(ModuleId id);

}  // namespace relib::agent::exits

#endif  // RELIB_AGENT_EXIT_HANDLER_TRACKER_H_
