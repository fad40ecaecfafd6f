// Libraries module code dlopen'ed. The worker defines dlopen, dlmopen and
// dlclose; every handle a module opened and did not close keeps that library
// (and, if it is the module's own file, the module) mapped after the unload.
// They are named in the unload report and, by policy, closed.
//
// The dynamic loader resolves a bare library name against the search path of
// the object that called dlopen; through this interposer that object is the
// worker, so a module's own RUNPATH is not searched (its copy lives in the
// worker's scratch directory, so $ORIGIN never named its build directory).
#ifndef RELIB_AGENT_DLOPEN_TRACKER_H_
#define RELIB_AGENT_DLOPEN_TRACKER_H_

#include <string>
#include <vector>

#include "agent/module_context.h"

namespace relib::agent::libraries {

struct OpenLibrary {
  std::string path;     // as the dynamic loader knows it (l_name)
  int references = 0;   // the module's dlopen calls not matched by dlclose
};

// dlopen for the agent itself: never attributed to a module, even in module
// scope (static constructors of the module being loaded run in its scope).
void* OpenAsHost(const char* path, int flags);
// dlclose for the agent itself (its handle on a module): never taken off a
// module's records, even inside a ClosingScope.
int CloseAsHost(void* handle);

// Libraries `id` holds open. Thread-safe.
std::vector<OpenLibrary> Open(ModuleId id);

struct Holder {
  ModuleId module = kHost;
  int references = 0;
};

// Modules holding the library whose l_name is `path` open (any module,
// including the library's own). Thread-safe.
std::vector<Holder> HoldersOf(const std::string& path);

// While alive, dlclose calls made in host scope on this thread are `id`'s:
// wrap the module's own dlclose in it (its static destructors run in host
// scope and may dlclose what the module opened).
class ClosingScope {
 public:
  explicit ClosingScope(ModuleId id);
  ~ClosingScope();
  ClosingScope(const ClosingScope&) = delete;
  ClosingScope& operator=(const ClosingScope&) = delete;

 private:
  ModuleId previous_;
};

// dlcloses every reference `id` holds, newest first. Call after the module's
// own dlclose (its static destructors may dlclose some themselves). Returns
// how many references were dropped.
int CloseAll(ModuleId id);

// Forgets `id`'s records without closing.
void Forget(ModuleId id);

}  // namespace relib::agent::libraries

#endif  // RELIB_AGENT_DLOPEN_TRACKER_H_
