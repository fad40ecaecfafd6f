#include "common/journal_log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "spdlog/pattern_formatter.h"

namespace relib::common {
namespace {

// "%*": the priority digit of the line's level.
class SyslogPriority final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& message, const std::tm&, spdlog::memory_buf_t& out) override {
    // trace, debug -> 7 (debug); info -> 6; warn -> 4; err -> 3; critical -> 2.
    static constexpr char kDigits[] = {'7', '7', '6', '4', '3', '2', '6'};
    out.push_back(kDigits[static_cast<int>(message.level)]);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriority>(); }
};

}  // namespace

bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long device = 0, inode = 0;
  if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2) return false;
  struct stat st {};
  return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == device && st.st_ino == inode;
}

void UseJournalFormat(spdlog::logger& logger, const std::string& prefix) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  // '%' in the prefix must not start a flag.
  std::string escaped;
  for (char c : prefix) escaped += c == '%' ? std::string("%%") : std::string(1, c);
  formatter->add_flag<SyslogPriority>('*').set_pattern("<%*>" + escaped + "%v");
  logger.set_formatter(std::move(formatter));
}

}  // namespace relib::common
