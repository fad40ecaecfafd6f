#include "daemon/worker_limits.h"

#include <signal.h>
#include <sys/resource.h>

#include <charconv>

#include "absl/strings/str_cat.h"

namespace relib::daemon {
namespace {

constexpr uint64_t kUnlimited = ~uint64_t{0};
constexpr uint64_t kCpuKillGraceSeconds = 2;

std::string Bytes(uint64_t bytes) {
  if (bytes % (1 << 30) == 0) return absl::StrCat(bytes >> 30, " GiB");
  if (bytes % (1 << 20) == 0) return absl::StrCat(bytes >> 20, " MiB");
  if (bytes % (1 << 10) == 0) return absl::StrCat(bytes >> 10, " KiB");
  return absl::StrCat(bytes, " bytes");
}

}  // namespace

std::vector<std::pair<int, std::pair<uint64_t, uint64_t>>> WorkerLimits::ToRlimits() const {
  std::vector<std::pair<int, std::pair<uint64_t, uint64_t>>> limits;
  auto both = [](uint64_t v) { return std::make_pair(v, v); };
  if (memory_bytes) limits.push_back({RLIMIT_AS, both(*memory_bytes)});
  if (data_bytes) limits.push_back({RLIMIT_DATA, both(*data_bytes)});
  if (open_files) limits.push_back({RLIMIT_NOFILE, both(*open_files)});
  if (processes) limits.push_back({RLIMIT_NPROC, both(*processes)});
  // Soft limit: SIGXCPU (named in the report); hard: SIGKILL if ignored.
  if (cpu_seconds) limits.push_back({RLIMIT_CPU, {*cpu_seconds, *cpu_seconds + kCpuKillGraceSeconds}});
  limits.push_back({RLIMIT_CORE, both(core_bytes == kUnlimited ? RLIM_INFINITY : core_bytes)});
  return limits;
}

std::string WorkerLimits::ExplainDeath(const common::ExitStatus& status, uint64_t peak_address_space) const {
  if (status.kind != common::ExitStatus::Kind::kSignaled) return "";
  if (status.code == SIGXCPU && cpu_seconds) {
    return absl::StrCat("exceeded its CPU time limit of ", *cpu_seconds, " s");
  }
  if (status.code == SIGKILL && cpu_seconds) {
    // Cannot be told from a SIGKILL by someone else for sure; say both.
    return absl::StrCat("possibly its CPU time limit of ", *cpu_seconds, " s (hard limit ",
                        *cpu_seconds + kCpuKillGraceSeconds, " s)");
  }
  // An allocation refused by RLIMIT_AS/RLIMIT_DATA ends in an abort (new
  // throws, malloc callers give up) or a fault. Told apart from other aborts
  // by how close to the limit relibd saw the worker last.
  std::optional<uint64_t> limit = memory_bytes ? memory_bytes : data_bytes;
  bool memory_death = status.code == SIGABRT || status.code == SIGSEGV || status.code == SIGBUS ||
                      status.code == SIGKILL;
  if (limit && memory_death && peak_address_space > 0 && peak_address_space >= *limit / 10 * 8) {
    return absl::StrCat("exceeded its memory limit of ", Bytes(*limit), " (", memory_bytes ? "address space" : "data",
                        " last seen at ", Bytes(peak_address_space / 4096 * 4096), ")");
  }
  return "";
}

absl::Status WorkerLimitTable::Add(const std::string& flag) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--worker-limit ", flag, ": ", why,
                                                   " (expected GROUP:KIND=VALUE, KIND memory, data, nofile, nproc, "
                                                   "cpu or core, e.g. default:memory=512M or *:cpu=60)"));
  };
  size_t colon = flag.find(':');
  size_t equals = flag.find('=', colon == std::string::npos ? 0 : colon);
  if (colon == std::string::npos || colon == 0 || equals == std::string::npos) return bad("malformed");
  std::string group = flag.substr(0, colon);
  std::string kind = flag.substr(colon + 1, equals - colon - 1);
  std::string text = flag.substr(equals + 1);
  static const std::map<std::string, bool> kKinds = {{"memory", true}, {"data", true}, {"nofile", false},
                                                     {"nproc", false}, {"cpu", false}, {"core", true}};
  auto kind_it = kKinds.find(kind);
  if (kind_it == kKinds.end()) return bad("unknown kind '" + kind + "'");
  uint64_t value = 0;
  if (text == "unlimited" && kind == "core") {
    value = kUnlimited;
  } else {
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end == text.data()) return bad("'" + text + "' is not a number");
    std::string suffix(end, static_cast<const char*>(text.data() + text.size()));
    uint64_t scale = 1;
    if (suffix == "K" || suffix == "k") scale = uint64_t{1} << 10;
    else if (suffix == "M" || suffix == "m") scale = uint64_t{1} << 20;
    else if (suffix == "G" || suffix == "g") scale = uint64_t{1} << 30;
    else if (!suffix.empty()) return bad("unknown suffix '" + suffix + "'");
    if (scale != 1 && !kind_it->second) return bad("a size suffix on a count");
    if (value > kUnlimited / scale) return bad("too large");
    value *= scale;
    if (value == 0 && kind != "core") return bad("0 would stop the worker from starting");
  }
  values_[group][kind] = value;
  return absl::OkStatus();
}

WorkerLimits WorkerLimitTable::For(const std::string& group) const { return Merged(&group); }

WorkerLimits WorkerLimitTable::Common() const { return Merged(nullptr); }

bool WorkerLimitTable::LimitsProcesses() const {
  for (const auto& [group, kinds] : values_) {
    if (kinds.count("nproc")) return true;
  }
  return false;
}

WorkerLimits WorkerLimitTable::Merged(const std::string* group) const {
  std::map<std::string, uint64_t> merged;
  if (auto all = values_.find("*"); all != values_.end()) merged = all->second;
  if (auto own = group ? values_.find(*group) : values_.end(); own != values_.end()) {
    for (const auto& [kind, value] : own->second) merged[kind] = value;
  }
  WorkerLimits limits;
  for (const auto& [kind, value] : merged) {
    if (kind == "memory") limits.memory_bytes = value;
    if (kind == "data") limits.data_bytes = value;
    if (kind == "nofile") limits.open_files = value;
    if (kind == "nproc") limits.processes = value;
    if (kind == "cpu") limits.cpu_seconds = value;
    if (kind == "core") limits.core_bytes = value;
  }
  return limits;
}

}  // namespace relib::daemon
