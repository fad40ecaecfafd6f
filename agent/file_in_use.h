// A cheap, exact question about one file: is any open file description of
// its inode left anywhere in the system (an mmap holds one)? Lets the unload
// check prove "unmapped" in a few system calls instead of reading all of
// /proc/self/maps.
#ifndef RELIB_AGENT_FILE_IN_USE_H_
#define RELIB_AGENT_FILE_IN_USE_H_

#include <string>

namespace relib::agent {

enum class FileUse {
  // Nothing but the probe had the inode open: no process maps it or holds
  // an fd of it.
  kUnused,
  // Something still has it open or mapped (this process or another).
  kInUse,
  // The kernel cannot tell here (leases disabled or unsupported by the file
  // system, not the file's owner without CAP_LEASE, no such file).
  kUnknown,
};

// Opens `path` read-only and tries to take a write lease on it: the kernel
// grants one only if no other file description of the inode is open for
// reading or writing, and every mapping of a file keeps the description it
// was mapped through open. The lease is released at once, with no signal
// owner, so an open racing the probe waits microseconds and no SIGIO is sent.
// REQUIRES: called from host code (the fd is never a module's). Thread-safe.
//
// A file system may keep a mapping on another inode than the one the path
// leads to (overlayfs maps the lower or upper file): rely on kUnused only for
// a file ProbeSeesMappings accepted.
FileUse ProbeFileUse(const std::string& path);

// ProbeFileUse, asked again a few times over ~0.3 ms while it answers
// kInUse: a description can be held for a moment by a process that is not a
// user of the file. A child cloned anywhere in the system holds a copy of
// every descriptor its parent had open until it closes them before its exec
// (relibd spawning a worker while another of its threads still writes the
// copy this worker then links is one). A holder that stays is still kInUse.
// REQUIRES: as ProbeFileUse. Thread-safe.
FileUse ProbeFileUseSettled(const std::string& path);

// True if ProbeFileUse can prove `path` unmapped: it answers kUnused now and
// kInUse while this function holds a private read-only mapping of one page of
// the file (opened the way dlopen opens it, its fd closed before probing).
// False for an empty file, one something else has open, or where the probe
// cannot tell. REQUIRES: as ProbeFileUse. Thread-safe.
bool ProbeSeesMappings(const std::string& path);

}  // namespace relib::agent

#endif  // RELIB_AGENT_FILE_IN_USE_H_
