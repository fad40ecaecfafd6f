// gRPC metadata keys of the public API that both relibd and clients use.
#ifndef RELIB_COMMON_API_METADATA_H_
#define RELIB_COMMON_API_METADATA_H_

namespace relib::common {

// Trailing metadata of a failed Unload or Reload: a serialized
// relib.v1.UnloadReport of what the refused or partial unload found
// (e.g. the threads still running).
inline constexpr char kUnloadReportMetadataKey[] = "relib-unload-report-bin";

}  // namespace relib::common

#endif  // RELIB_COMMON_API_METADATA_H_
