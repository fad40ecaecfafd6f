// Why the calling thread is about to die: an interposer that is going to
// abort (or that takes a step which may fault) leaves a sentence here, and
// the fatal-signal handler (crash_handler.h) copies it into the flight
// recorder, so relibd can say more than the signal's name.
#ifndef RELIB_AGENT_CRASH_NOTE_H_
#define RELIB_AGENT_CRASH_NOTE_H_

namespace relib::agent {

// Thread-local; async-signal-safe; never allocates. `text` is not copied: it
// must stay valid until cleared (static storage or a thread-local buffer).
// nullptr clears the note.
void SetCrashNote(const char* text);

// The calling thread's note, or nullptr.
const char* CrashNote();

}  // namespace relib::agent

#endif  // RELIB_AGENT_CRASH_NOTE_H_
