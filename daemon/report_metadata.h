// An unload report as the trailing metadata of a failed Unload or Reload.
// Metadata is size-limited on the receiving side (a few KiB by default in
// gRPC); a report past that limit would replace the call's real error with a
// transport error, so what is sent is cut to fit and marked truncated — the
// whole report stays available through Status (with_reports).
#ifndef RELIB_DAEMON_REPORT_METADATA_H_
#define RELIB_DAEMON_REPORT_METADATA_H_

#include <cstddef>
#include <string>

#include "relib/v1/relibd.pb.h"

namespace relib::daemon {

// Serialized reports stay within this (base64 on the wire adds a third).
inline constexpr size_t kMaxReportMetadataBytes = 3072;
// Status messages longer than this are cut (they travel as metadata too).
inline constexpr size_t kMaxStatusMessageBytes = 2048;

// `report` serialized, cut to at most kMaxReportMetadataBytes: long lists
// keep their first entries, long texts their start, and `truncated` is set
// whenever anything was left out.
std::string EncodeReportForMetadata(const v1::UnloadReport& report);

// `message` cut to kMaxStatusMessageBytes, saying how long it was.
std::string CapStatusMessage(std::string message);

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_REPORT_METADATA_H_
