// Names for code addresses in reports (allocation sites, thread routines).
#ifndef RELIB_AGENT_SYMBOLIZE_H_
#define RELIB_AGENT_SYMBOLIZE_H_

#include <string>

namespace relib::agent {

// "demangled::symbol+0x1c (libfoo.so)" for exported symbols, "libfoo.so+0x1234"
// for hidden ones, "0x7f..." if no loaded object contains `address`.
// REQUIRES: the object containing `address` is still mapped. Takes the
// dynamic loader's lock (dladdr): never call with a lock a loader callback
// may take.
std::string Symbolize(const void* address);

}  // namespace relib::agent

#endif  // RELIB_AGENT_SYMBOLIZE_H_
