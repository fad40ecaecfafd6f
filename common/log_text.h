// Module-supplied text made safe for one log line: control characters,
// invalid UTF-8 and line separators are escaped, so a module cannot forge
// log lines (or terminal escapes) in relibd's or the worker's log.
#ifndef RELIB_COMMON_LOG_TEXT_H_
#define RELIB_COMMON_LOG_TEXT_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace relib::common {

// Returns `text` as printable single-line text: '\\' becomes "\\\\", '\n',
// '\r' and '\t' become "\\n", "\\r", "\\t", every other C0/C1 control, DEL,
// U+2028/U+2029 and each byte of an invalid UTF-8 sequence becomes "\\xNN".
// Valid UTF-8 text stays as it is. If more than `max_bytes` input bytes
// would be needed, the rest is replaced by " [... N more bytes]".
std::string EscapeForLog(std::string_view text, size_t max_bytes = std::string::npos);

}  // namespace relib::common

#endif  // RELIB_COMMON_LOG_TEXT_H_
