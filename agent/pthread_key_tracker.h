// pthread keys created in module scope. The worker defines pthread_key_create
// and pthread_key_delete (and C11's tss_create and tss_delete, which glibc
// implements without them); at unload the module's remaining keys are deleted
// so their destructors can never run after the module's code is gone (a
// thread exiting later would otherwise call into unmapped memory).
#ifndef RELIB_AGENT_PTHREAD_KEY_TRACKER_H_
#define RELIB_AGENT_PTHREAD_KEY_TRACKER_H_

#include "agent/module_context.h"

namespace relib::agent::keys {

// Deletes every remaining key of `id`; returns how many.
int DeleteAll(ModuleId id);

}  // namespace relib::agent::keys

#endif  // RELIB_AGENT_PTHREAD_KEY_TRACKER_H_
