// Why the calling thread is about to die: an interposer that is going to
// abort (or that takes a step which may fault) leaves a sentence here, and
// the fatal-signal handler (crash_handler.h) copies it into the flight
// recorder, so relibd can say more than the signal's name. (free's inline
// path leaves none: its loads that may fault are known by address,
// heap::FaultNote.)
#ifndef RELIB_AGENT_CRASH_NOTE_H_
#define RELIB_AGENT_CRASH_NOTE_H_

namespace relib::agent {

namespace internal {
// local-exec: written from inside free() without allocating, at a fixed
// offset from the thread pointer (the agent is only ever linked into the host
// executable, agent/CMakeLists.txt), with no GOT load.
extern constinit thread_local const char* crash_note __attribute__((tls_model("local-exec")));
}  // namespace internal

// Thread-local; async-signal-safe; never allocates. `text` is not copied: it
// must stay valid until cleared (static storage or a thread-local buffer).
// nullptr clears the note. Inline: free() sets and clears it on every free
// that module code makes.
inline void SetCrashNote(const char* text) { internal::crash_note = text; }

// The calling thread's note, or nullptr.
inline const char* CrashNote() { return internal::crash_note; }

}  // namespace relib::agent

#endif  // RELIB_AGENT_CRASH_NOTE_H_
