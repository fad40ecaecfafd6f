// How relibctl prints results: readable text by default, JSON for tools.
#ifndef RELIB_CLIENT_OUTPUT_H_
#define RELIB_CLIENT_OUTPUT_H_

#include <string>

#include "relib/v1/relibd.pb.h"

namespace relib::client {

// One JSON object (protobuf's canonical JSON mapping, field names as in the proto).
std::string ToJson(const google::protobuf::Message& message);

std::string FormatModule(const v1::ModuleInfo& module);
std::string FormatReport(const v1::UnloadReport& report);
std::string FormatStatus(const v1::StatusResponse& status);
// One line per module outcome of a config reload, then the settings that wait
// for a restart.
std::string FormatConfigReload(const v1::ReloadConfigResponse& response);
// "YYYY-MM-DD HH:MM:SS.mmm" in local time.
std::string FormatTimestamp(int64_t unix_ms);
// One line, starting with the event's local time.
std::string FormatEvent(const v1::Event& event);

}  // namespace relib::client

#endif  // RELIB_CLIENT_OUTPUT_H_
