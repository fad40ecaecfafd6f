// Log lines for the systemd journal: when stderr is the journal
// (JOURNAL_STREAM names it), lines carry an sd-daemon(3) "<N>" priority
// prefix and no timestamp or level word of their own (journald adds the
// time, the pid and the identifier, and filters on the priority).
#ifndef RELIB_COMMON_JOURNAL_LOG_H_
#define RELIB_COMMON_JOURNAL_LOG_H_

#include <string>

#include "spdlog/logger.h"

namespace relib::common {

// True when stderr is the journal stream JOURNAL_STREAM ("dev:inode") names.
bool StderrIsJournal();

// Gives `logger` the journal format "<N>`prefix`message".
void UseJournalFormat(spdlog::logger& logger, const std::string& prefix = "");

}  // namespace relib::common

#endif  // RELIB_COMMON_JOURNAL_LOG_H_
