#include "daemon/report_metadata.h"

#include "absl/strings/str_cat.h"

namespace relib::daemon {
namespace {

template <typename Repeated>
void KeepFirst(Repeated& list, int count) {
  while (list.size() > count) list.RemoveLast();
}

void CutText(std::string* text, size_t bytes) {
  if (text->size() > bytes) *text = absl::StrCat(text->substr(0, bytes), "... (", text->size(), " bytes in all)");
}

// Keeps at most `entries` of every list and `chars` of every free text.
void Cut(v1::UnloadReport& report, int entries, size_t chars) {
  KeepFirst(*report.mutable_remaining_mappings(), entries);
  KeepFirst(*report.mutable_pin_reasons(), entries);
  KeepFirst(*report.mutable_live_threads(), entries);
  KeepFirst(*report.mutable_heap()->mutable_top_sites(), entries);
  KeepFirst(*report.mutable_tls()->mutable_discarded_on_threads(), entries);
  KeepFirst(*report.mutable_open_fds(), entries);
  KeepFirst(*report.mutable_mappings(), entries);
  KeepFirst(*report.mutable_code_references(), entries);
  KeepFirst(*report.mutable_libraries(), entries);
  KeepFirst(*report.mutable_children(), entries);
  CutText(report.mutable_before_unload_error(), chars);
  for (std::string& line : *report.mutable_remaining_mappings()) CutText(&line, chars);
  for (std::string& reason : *report.mutable_pin_reasons()) CutText(&reason, chars);
  for (auto& thread : *report.mutable_live_threads()) CutText(thread.mutable_start_routine(), chars);
  for (auto& fd : *report.mutable_open_fds()) CutText(fd.mutable_description(), chars);
  for (auto& ref : *report.mutable_code_references()) CutText(ref.mutable_description(), chars);
  for (auto& child : *report.mutable_children()) CutText(child.mutable_command_line(), chars);
}

}  // namespace

std::string EncodeReportForMetadata(const v1::UnloadReport& report) {
  if (report.ByteSizeLong() <= kMaxReportMetadataBytes) return report.SerializeAsString();
  v1::UnloadReport cut;
  for (int entries = 16; entries >= 0; entries /= 2) {
    for (size_t chars : {size_t{512}, size_t{128}, size_t{32}}) {
      cut = report;
      cut.set_truncated(true);
      Cut(cut, entries, chars);
      if (cut.ByteSizeLong() <= kMaxReportMetadataBytes) return cut.SerializeAsString();
    }
    if (entries == 0) break;
  }
  // Only the identity and the counts' absence remain: still says "cut".
  v1::UnloadReport bare;
  bare.set_name(report.name().substr(0, 128));
  bare.set_version(report.version());
  bare.set_refused(report.refused());
  bare.set_unmapped(report.unmapped());
  bare.set_worker_pid(report.worker_pid());
  bare.set_truncated(true);
  return bare.SerializeAsString();
}

std::string CapStatusMessage(std::string message) {
  CutText(&message, kMaxStatusMessageBytes);
  return message;
}

}  // namespace relib::daemon
