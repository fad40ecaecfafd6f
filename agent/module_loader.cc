#include "agent/module_loader.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/elf_file.h"
#include "agent/host_buffer.h"
#include "agent/shared_library.h"
#include "common/proc_maps.h"
#include "common/status_macros.h"
#include "relib/module.h"
#include "spdlog/spdlog.h"

namespace relib::agent {
namespace {

int64_t MicrosSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start)
      .count();
}

void RemoveFile(const std::string& path) {
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
}

}  // namespace

struct ModuleLoader::Module {
  std::string name;
  uint64_t version = 0;
  std::string source_path;
  std::string copy_path;
  std::optional<SharedLibrary> library;
  const relib_module_descriptor* descriptor = nullptr;
  // Handed to on_load; must stay at a fixed address while loaded.
  relib_host_api host_api{};
  ModuleLogFn* log = nullptr;

  static void Log(void* context, int level, const char* text, size_t len) noexcept {
    auto* self = static_cast<Module*>(context);
    try {
      (*self->log)(level, self->name, std::string_view(text, len));
    } catch (...) {
    }
  }
};

ModuleLoader::ModuleLoader(std::string scratch_dir, ModuleLogFn log)
    : scratch_dir_(std::move(scratch_dir)), log_(std::move(log)) {}

ModuleLoader::~ModuleLoader() {
  for (auto& [name, module] : modules_) {
    module->library.reset();
    RemoveFile(module->copy_path);
  }
}

absl::StatusOr<std::unique_ptr<ModuleLoader::Module>> ModuleLoader::Open(const std::string& name,
                                                                         const std::string& path,
                                                                         uint64_t version) {
  RELIB_RETURN_IF_ERROR(CheckSharedObject(path));
  auto module = std::make_unique<Module>();
  module->name = name;
  module->version = version;
  module->source_path = path;
  module->copy_path = absl::StrCat(scratch_dir_, "/", name, ".v", version, ".", next_copy_id_++, ".so");
  std::error_code error;
  std::filesystem::copy_file(path, module->copy_path, std::filesystem::copy_options::overwrite_existing,
                             error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot copy ", path, " to ", module->copy_path, ": ",
                                            error.message()));
  }
  auto library = SharedLibrary::Open(module->copy_path);
  if (!library.ok()) {
    RemoveFile(module->copy_path);
    return absl::InvalidArgumentError(absl::StrCat("cannot load ", path, ": ", library.status().message()));
  }
  module->library.emplace(std::move(library).value());
  auto fail = [&](absl::Status status) {
    module->library.reset();
    RemoveFile(module->copy_path);
    return status;
  };
  const auto* descriptor =
      static_cast<const relib_module_descriptor*>(module->library->Symbol(RELIB_DESCRIPTOR_SYMBOL_NAME));
  if (descriptor == nullptr) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        path, " is not a relib module: it does not export the descriptor symbol ",
        RELIB_DESCRIPTOR_SYMBOL_NAME, " (define it with RELIB_MODULE or relib/module.h)")));
  }
  if (descriptor->abi_version != RELIB_ABI_VERSION) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat(path, " was built for relib module ABI version ", descriptor->abi_version,
                     "; this worker supports version ", RELIB_ABI_VERSION, " (rebuild the module)")));
  }
  if (descriptor->export_count > 0 && descriptor->exports == nullptr) {
    return fail(absl::InvalidArgumentError(absl::StrCat(path, ": descriptor lists ", descriptor->export_count,
                                                        " exports but no export table")));
  }
  module->descriptor = descriptor;
  module->log = &log_;
  module->host_api.abi_version = RELIB_ABI_VERSION;
  module->host_api.host_context = module.get();
  module->host_api.log = &Module::Log;
  return module;
}

absl::Status ModuleLoader::RunOnLoad(Module& module) {
  if (module.descriptor->on_load == nullptr) return absl::OkStatus();
  HostBuffer error;
  int rc = module.descriptor->on_load(&module.host_api, error.abi());
  if (rc != RELIB_OK) {
    return absl::FailedPreconditionError(absl::StrCat(
        "on_load of module '", module.name, "' (", module.source_path, ") failed with code ", rc,
        error.data().empty() ? "" : ": ", error.data()));
  }
  return absl::OkStatus();
}

LoadInfo ModuleLoader::Describe(const Module& module, int64_t load_micros) const {
  LoadInfo info;
  info.descriptor_name = module.descriptor->name ? module.descriptor->name : "";
  for (size_t i = 0; i < module.descriptor->export_count; ++i) {
    const char* export_name = module.descriptor->exports[i].name;
    info.exports.push_back(export_name ? export_name : "");
  }
  info.load_micros = load_micros;
  return info;
}

absl::StatusOr<LoadInfo> ModuleLoader::Load(const std::string& name, const std::string& path,
                                            uint64_t version) {
  if (IsLoaded(name)) return absl::AlreadyExistsError(absl::StrCat("module '", name, "' is already loaded"));
  auto start = std::chrono::steady_clock::now();
  RELIB_ASSIGN_OR_RETURN(std::unique_ptr<Module> module, Open(name, path, version));
  if (absl::Status status = RunOnLoad(*module); !status.ok()) {
    UnloadReport discarded;
    CloseAndVerify(*module, discarded, /*keep_copy=*/false);
    return status;
  }
  LoadInfo info = Describe(*module, MicrosSince(start));
  spdlog::info("loaded module={} version={} path={} copy={} micros={}", name, version, path,
               module->copy_path, info.load_micros);
  modules_[name] = std::move(module);
  return info;
}

absl::Status ModuleLoader::RunBeforeUnload(Module& module, bool force, UnloadReport& report) {
  report.name = module.name;
  report.version = module.version;
  report.path = module.source_path;
  if (module.descriptor->before_unload == nullptr) {
    report.before_unload_missing = true;
    return absl::OkStatus();
  }
  auto start = std::chrono::steady_clock::now();
  HostBuffer error;
  int rc = module.descriptor->before_unload(error.abi());
  report.before_unload_micros = MicrosSince(start);
  if (rc == RELIB_OK) return absl::OkStatus();
  report.before_unload_error = absl::StrCat("code ", rc, error.data().empty() ? "" : ": ", error.data());
  if (force) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("before_unload of module '", module.name, "' version ",
                                                    module.version, " failed (", report.before_unload_error,
                                                    "); the module stays loaded (use force to unload anyway)"));
}

void ModuleLoader::CloseAndVerify(Module& module, UnloadReport& report, bool keep_copy) {
  auto start = std::chrono::steady_clock::now();
  absl::Status closed = module.library->Close();
  module.library.reset();
  if (!closed.ok()) spdlog::warn("module={} version={} phase=unload {}", module.name, module.version,
                                 std::string(closed.message()));
  auto mappings = common::ReadMappings(0);
  if (mappings.ok()) {
    auto remaining = common::MappingsOfFile(*mappings, module.copy_path);
    report.unmapped = remaining.empty();
    for (const auto& mapping : remaining) report.remaining_mappings.push_back(mapping.line);
  } else {
    report.unmapped = false;
    report.remaining_mappings.push_back(absl::StrCat("cannot read /proc/self/maps: ", mappings.status().message()));
  }
  report.unload_micros = MicrosSince(start);
  if (!keep_copy) RemoveFile(module.copy_path);
}

absl::StatusOr<UnloadReport> ModuleLoader::Unload(const std::string& name, bool force) {
  auto it = modules_.find(name);
  if (it == modules_.end()) return absl::NotFoundError(absl::StrCat("module '", name, "' is not loaded"));
  UnloadReport report;
  RELIB_RETURN_IF_ERROR(RunBeforeUnload(*it->second, force, report));
  CloseAndVerify(*it->second, report, /*keep_copy=*/false);
  spdlog::info("unloaded module={} version={} unmapped={}", name, report.version, report.unmapped);
  modules_.erase(it);
  return report;
}

absl::StatusOr<ReloadOutcome> ModuleLoader::Reload(const std::string& name, const std::string& path,
                                                   uint64_t version, bool force, UnloadReport* report_out) {
  auto it = modules_.find(name);
  if (it == modules_.end()) return absl::NotFoundError(absl::StrCat("module '", name, "' is not loaded"));
  auto start = std::chrono::steady_clock::now();
  // A file that cannot even be opened never disturbs the running version.
  RELIB_ASSIGN_OR_RETURN(std::unique_ptr<Module> next, Open(name, path, version));
  std::unique_ptr<Module>& current = it->second;

  ReloadOutcome outcome;
  if (absl::Status status = RunBeforeUnload(*current, force, outcome.report); !status.ok()) {
    UnloadReport discarded;
    CloseAndVerify(*next, discarded, /*keep_copy=*/false);
    return status;
  }
  CloseAndVerify(*current, outcome.report, /*keep_copy=*/true);
  if (report_out != nullptr) *report_out = outcome.report;

  if (absl::Status status = RunOnLoad(*next); !status.ok()) {
    UnloadReport discarded;
    CloseAndVerify(*next, discarded, /*keep_copy=*/false);
    // Roll back: load the previous version again from its private copy.
    std::string old_copy = current->copy_path;
    auto previous = Open(name, old_copy, current->version);
    RemoveFile(old_copy);
    absl::Status restored = previous.ok() ? RunOnLoad(**previous) : previous.status();
    if (restored.ok()) {
      (*previous)->source_path = current->source_path;
      current = std::move(previous).value();
      return absl::Status(status.code(), absl::StrCat(status.message(), "; version ", current->version,
                                                      " was loaded again"));
    }
    if (previous.ok()) {
      UnloadReport ignored;
      CloseAndVerify(**previous, ignored, /*keep_copy=*/false);
    }
    modules_.erase(it);
    return absl::Status(status.code(), absl::StrCat(status.message(), "; loading the previous version again "
                                                    "also failed (", restored.message(),
                                                    "), the module is no longer loaded"));
  }
  RemoveFile(current->copy_path);
  outcome.load = Describe(*next, MicrosSince(start));
  spdlog::info("reloaded module={} version={}->{} path={} unmapped={}", name, current->version, version, path,
               outcome.report.unmapped);
  current = std::move(next);
  return outcome;
}

absl::StatusOr<std::string> ModuleLoader::Call(const std::string& name, const std::string& export_name,
                                               std::string_view input) {
  auto it = modules_.find(name);
  if (it == modules_.end()) return absl::NotFoundError(absl::StrCat("module '", name, "' is not loaded"));
  const relib_module_descriptor& descriptor = *it->second->descriptor;
  std::vector<std::string> names;
  for (size_t i = 0; i < descriptor.export_count; ++i) {
    const relib_export& entry = descriptor.exports[i];
    if (entry.name == nullptr || entry.fn == nullptr) continue;
    if (export_name != entry.name) {
      names.push_back(entry.name);
      continue;
    }
    HostBuffer out;
    int rc = entry.fn(input.data(), input.size(), out.abi());
    if (rc != RELIB_OK) {
      return absl::UnknownError(absl::StrCat("export '", export_name, "' of module '", name, "' failed with code ",
                                             rc, out.data().empty() ? "" : ": ", out.data()));
    }
    return std::move(out.data());
  }
  return absl::NotFoundError(absl::StrCat("module '", name, "' has no export '", export_name, "' (exports: ",
                                          names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
}

}  // namespace relib::agent
