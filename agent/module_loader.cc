#include "agent/module_loader.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "agent/elf_file.h"
#include "agent/exit_handler_tracker.h"
#include "agent/file_in_use.h"
#include "agent/heap_tracker.h"
#include "agent/loaded_range.h"
#include "agent/host_buffer.h"
#include "agent/module_context.h"
#include "agent/process_hook_tracker.h"
#include "agent/pthread_key_tracker.h"
#include "agent/shared_library.h"
#include "agent/signal_tracker.h"
#include "agent/symbolize.h"
#include "agent/timer_tracker.h"
#include "agent/tls_tracker.h"
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

// The private copy exists so the user may overwrite their file while it is
// loaded and so dlopen never finds an old version by name. relibd hands the
// worker its own copy (`display_path` is then the user's path), made
// read-only once written (daemon/module_file.h): no one rewrites that inode,
// so a hard link to it gives the same guarantees as a copy without copying.
// Writable files, files of this worker's scratch dir (a rollback to a copy
// that may still be mapped: the same inode would make dlopen return the old
// mapping) and failed links (another file system; a worker under another uid,
// fs.protected_hardlinks) are copied. Returns true if `copy` was linked;
// sets `refused` if the link failed with EPERM.
bool LinkReadOnlyCopy(const std::string& file, const std::string& display_path, const std::string& copy,
                      bool& refused) {
  if (display_path.empty() || display_path == file) return false;
  struct stat st;
  if (::stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 0222) != 0) return false;
  ::unlink(copy.c_str());
  if (::link(file.c_str(), copy.c_str()) == 0) return true;
  if (errno == EPERM) refused = true;
  return false;
}

// Fills the unnamed file `spare` (O_TMPFILE, opened for reading and
// writing) with the bytes of `in` (`in_stat`: its fstat) and its mode, and
// links it at `to`. Returns the copy, still open (for its checks), with its
// fstat in `copy_stat`; an invalid fd (nothing left at `to`) if any step
// fails.
common::UniqueFd CopyIntoSpare(common::UniqueFd spare, int in, const struct stat& in_stat, const std::string& to,
                               struct stat* copy_stat) {
  off_t offset = 0;
  while (offset < in_stat.st_size) {
    ssize_t n = ::copy_file_range(in, &offset, spare.get(), nullptr, static_cast<size_t>(in_stat.st_size - offset), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return {};
  }
  if (::fchmod(spare.get(), in_stat.st_mode & 0777) != 0 || ::fstat(spare.get(), copy_stat) != 0) return {};
  // Named through the descriptor itself where the kernel allows it (Linux
  // 6.10+ for a file this process opened, else CAP_DAC_READ_SEARCH): the
  // /proc path costs a walk through /proc/self/fd (~3 µs more, measured).
  // A kernel that refused once (ENOENT) refuses every time: not asked again.
  static std::atomic<bool> empty_path_refused{false};
  bool refused_now = false;
  if (!empty_path_refused.load(std::memory_order_relaxed)) {
    if (::linkat(spare.get(), "", AT_FDCWD, to.c_str(), AT_EMPTY_PATH) == 0) return spare;
    refused_now = errno == ENOENT;
  }
  const std::string self = absl::StrCat("/proc/self/fd/", spare.get());
  if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, to.c_str(), AT_SYMLINK_FOLLOW) != 0) return {};
  // The same link by path worked: the ENOENT was the refusal, not `to`.
  if (refused_now) empty_path_refused.store(true, std::memory_order_relaxed);
  return spare;
}

struct RangeQuery {
  const std::string* path;
  uintptr_t start = UINTPTR_MAX;
  uintptr_t end = 0;
};

int FindRange(dl_phdr_info* info, size_t, void* data) {
  auto* query = static_cast<RangeQuery*>(data);
  if (info->dlpi_name == nullptr || *query->path != info->dlpi_name) return 0;
  LoadedRange range = LoadedRangeOf(*info);
  query->start = range.start;
  query->end = range.end;
  return 1;
}

std::string DescribeThreads(const std::vector<threads::LiveThread>& live) {
  std::vector<std::string> parts;
  for (const auto& t : live) {
    parts.push_back(absl::StrCat("tid ", t.tid, t.name.empty() ? "" : absl::StrCat(" '", t.name, "'"), " (",
                                 t.start_routine, ")"));
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace

struct ModuleLoader::Module {
  std::string name;
  uint64_t version = 0;
  std::string source_path;
  std::string copy_path;
  ModuleOptions options;
  ModuleId id = kHost;
  std::optional<SharedLibrary> library;
  // Where its segments are mapped, for the last guards before dlclose.
  uintptr_t code_start = 0;
  uintptr_t code_end = 0;
  const relib_module_descriptor* descriptor = nullptr;
  bool thread_safe = false;
  PinningFacts pinning;
  // ProbeFileUse sees mappings of the copy on its file system: its answer
  // after dlclose proves "unmapped" (otherwise the maps scan does).
  bool probe_sees_mappings = false;
  // Handed to on_load; must stay at a fixed address while loaded.
  relib_host_api host_api{};
  ModuleLogFn* log = nullptr;
  HostServices* services = nullptr;

  // The host-API entries (relib_host_api). Each checks what the module
  // passed, returns an error code with the reason kept for last_error, and
  // lets no exception out.
  static void Log(void* context, int level, const char* text, size_t len) noexcept {
    auto* self = static_cast<Module*>(context);
    HostScope host;
    try {
      if (text == nullptr && len > 0) {
        (*self->log)(level, self->name, absl::StrCat("(log called with a null text pointer and length ", len, ")"));
        return;
      }
      (*self->log)(level, self->name, std::string_view(text, text == nullptr ? 0 : len));
    } catch (...) {
    }
  }
  static int SaveState(void* context, const char* key, const void* data, size_t len) noexcept {
    auto* self = static_cast<Module*>(context);
    HostScope host;
    try {
      if (!self->services) return Fail(RELIB_ERROR, "this host has no state store");
      if (key == nullptr) return Fail(RELIB_ERROR, "save_state: the key is a null pointer");
      if (data == nullptr && len > 0) {
        return Fail(RELIB_ERROR, absl::StrCat("save_state: the data is a null pointer with a length of ", len, " bytes"));
      }
      std::string_view value(static_cast<const char*>(data), data == nullptr ? 0 : len);
      return Result(self->services->SaveState(self->name, key, value));
    } catch (const std::bad_alloc&) {
      return Fail(RELIB_ERROR_RESOURCE_EXHAUSTED,
                  absl::StrCat("save_state: the worker ran out of memory for a value of ", len, " bytes"));
    } catch (...) {
      return Fail(RELIB_ERROR, "save_state: unexpected error in the host");
    }
  }
  static int LoadState(void* context, const char* key, relib_buffer* out) noexcept {
    auto* self = static_cast<Module*>(context);
    std::optional<std::string> value;
    {
      HostScope host;
      try {
        if (!self->services) return Fail(RELIB_ERROR, "this host has no state store");
        if (key == nullptr) return Fail(RELIB_ERROR, "load_state: the key is a null pointer");
        if (out == nullptr || out->append == nullptr) return Fail(RELIB_ERROR, "load_state: the output buffer is a null pointer");
        value = self->services->LoadState(self->name, key);
      } catch (const std::bad_alloc&) {
        return Fail(RELIB_ERROR_RESOURCE_EXHAUSTED, "load_state: the worker ran out of memory");
      } catch (...) {
        return Fail(RELIB_ERROR, "load_state: unexpected error in the host");
      }
    }
    if (!value) return RELIB_NOT_FOUND;
    return out->append(out, value->data(), value->size());
  }
  static int StoreFd(void* context, const char* key, int fd) noexcept {
    auto* self = static_cast<Module*>(context);
    HostScope host;
    try {
      if (!self->services) return Fail(RELIB_ERROR, "this host has no fd store");
      if (key == nullptr) return Fail(RELIB_ERROR, "store_fd: the key is a null pointer");
      return Result(self->services->StoreFd(self->name, key, fd));
    } catch (...) {
      return Fail(RELIB_ERROR, "store_fd: unexpected error in the host");
    }
  }
  static int TakeFd(void* context, const char* key) noexcept {
    auto* self = static_cast<Module*>(context);
    try {
      if (!self->services) return Fail(-1, "this host has no fd store");
      if (key == nullptr) return Fail(-1, "take_fd: the key is a null pointer");
      int fd = self->services->TakeFd(self->name, key);
      if (fd < 0) Fail(-1, "take_fd: no fd is stored under this key");
      return fd;
    } catch (...) {
      return Fail(-1, "take_fd: unexpected error in the host");
    }
  }
  static int LastError(void*, relib_buffer* out) noexcept {
    if (out == nullptr || out->append == nullptr) return RELIB_ERROR;
    return out->append(out, last_error, last_error_length);
  }

 private:
  // Why the calling thread's last failed host-API call failed. Plain bytes:
  // nothing to destroy when a module's thread ends.
  static thread_local char last_error[1024];
  static thread_local size_t last_error_length;

  static int Fail(int code, std::string_view why) noexcept {
    last_error_length = std::min(why.size(), sizeof(last_error));
    std::memcpy(last_error, why.data(), last_error_length);
    return code;
  }
  static int Result(const absl::Status& status) noexcept {
    if (status.ok()) return RELIB_OK;
    return Fail(absl::IsResourceExhausted(status) ? RELIB_ERROR_RESOURCE_EXHAUSTED : RELIB_ERROR, std::string_view(status.message().data(), status.message().size()));
  }
};

thread_local char ModuleLoader::Module::last_error[1024];
thread_local size_t ModuleLoader::Module::last_error_length = 0;

ModuleLoader::ModuleLoader(std::string scratch_dir, ModuleLogFn log, HostServices* services)
    : scratch_dir_(std::move(scratch_dir)), log_(std::move(log)), services_(services) {
  // As /proc/self/fd names files: symlinks resolved.
  std::error_code error;
  std::filesystem::path canonical = std::filesystem::weakly_canonical(scratch_dir_, error);
  scratch_prefix_ = (error ? std::filesystem::path(scratch_dir_) : canonical).string() + "/";
  fds::SnapshotHostFds();
  hooks::SnapshotHost();
}

ModuleLoader::~ModuleLoader() {
  for (const std::string& path : removals_after_reply_) RemoveFile(path);
  for (auto& [name, module] : modules_) {
    RemoveFile(module->copy_path);
    // The process is ending. Code a thread or a timer notification still runs
    // stays mapped until the process is gone.
    timers::Outcome timers = timers::DeleteAll(module->id, std::chrono::milliseconds(0));
    if (timers.in_flight > 0 || threads::Count(module->id) > 0) {
      module->library->Release();
      continue;
    }
    // The rest is unloaded for real: what it registered for exit runs now,
    // while its code is mapped, and nothing is left that leads into it.
    tls::RunOrDiscard(module->id);
    keys::DeleteAll(module->id);
    ReleasePathsIntoCode(*module);
    module->library.reset();
    ForgetPathsIntoCode(module->id);
  }
  // Parked versions keep code their threads run: never dlclosed.
  for (auto& module : parked_) {
    if (module->library) module->library->Release();
  }
}

void ModuleLoader::EnterPhase(common::Phase phase, const Module& module, const std::string& detail) {
  if (recorder_ != nullptr) recorder_->EnterPhase(phase, module.name, detail);
}

absl::StatusOr<std::unique_ptr<ModuleLoader::Module>> ModuleLoader::Open(const std::string& name,
                                                                         const std::string& file, uint64_t version,
                                                                         const ModuleOptions& options,
                                                                         const std::string& display_path,
                                                                         bool placed_in_scratch,
                                                                         bool hold_exit_registrations) {
  const std::string& path = display_path.empty() ? file : display_path;  // what messages show
  // A placed file is this load's: nothing else removes it if the load fails.
  const bool placed = placed_in_scratch && file.rfind(scratch_dir_ + "/", 0) == 0;
  // Opened once: checked as an ELF shared object before anything is copied,
  // then the copy's source.
  struct stat source_stat {};
  absl::StatusOr<common::UniqueFd> source = OpenSharedObject(file, &source_stat);
  if (!source.ok()) {
    if (placed) RemoveFile(file);
    return absl::Status(source.status().code(), absl::StrReplaceAll(source.status().message(), {{file, path}}));
  }
  auto module = std::make_unique<Module>();
  module->name = name;
  module->version = version;
  module->source_path = path;
  module->options = options;
  std::error_code error;
  // The file dlopen will map, open for its checks, and its fstat.
  common::UniqueFd image;
  struct stat image_stat {};
  if (placed) {
    module->copy_path = file;  // relibd's link, already private to this load
    image = std::move(source).value();
    image_stat = source_stat;
  } else {
    module->copy_path = absl::StrCat(scratch_dir_, "/", name, ".v", version, ".", next_copy_id_++, ".so");
    const bool own_copy = file.rfind(scratch_dir_ + "/", 0) == 0 || IsModuleFile(file);
    if (own_copy || links_refused_ || !LinkReadOnlyCopy(file, display_path, module->copy_path, links_refused_)) {
      // The copy's name is new in this worker; a spare inode made after the
      // last reply saves creating one now.
      if (spare_copy_.valid()) {
        image = CopyIntoSpare(std::move(spare_copy_), source->get(), source_stat, module->copy_path, &image_stat);
      }
      if (!image.valid()) {
        std::filesystem::copy_file(file, module->copy_path, std::filesystem::copy_options::overwrite_existing, error);
      }
    }
  }
  source = common::UniqueFd();
  if (error) {
    return absl::InternalError(absl::StrCat("cannot copy ", path, " to ", module->copy_path, ": ", error.message()));
  }
  if (!image.valid()) {
    image = common::UniqueFd(::open(module->copy_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (!image.valid() || ::fstat(image.get(), &image_stat) != 0) {
      absl::Status status = absl::ErrnoToStatus(errno, absl::StrCat("cannot open the copy of module file ", path));
      RemoveFile(module->copy_path);
      return status;
    }
  }
  // The copy is what dlopen will map, so the copy is what must be complete
  // and a module: a file cut short faults the loader, and a library that is
  // not a module must be refused before its constructors run. Checked
  // through the open copy itself, read once.
  auto pinning = CheckModuleFile(image.get(), image_stat, path);
  // Closed before the lease probe below: nothing else may have the copy open.
  const bool closed = ::close(image.Release()) == 0;
  if (pinning.ok() && !closed) {
    pinning = absl::InternalError(absl::StrCat("cannot write the copy of module file ", path, ": ", std::strerror(errno)));
  }
  if (!pinning.ok()) {
    RemoveFile(module->copy_path);
    return absl::Status(pinning.status().code(),
                        absl::StrReplaceAll(pinning.status().message(), {{module->copy_path, path}}));
  }
  module->pinning = std::move(pinning).value();
  module->id = AcquireModuleId();
  if (module->id == kHost) {
    RemoveFile(module->copy_path);
    return absl::ResourceExhaustedError(absl::StrCat("cannot load ", path, ": too many modules in this worker"));
  }
  // Before any module code runs, while nothing else has the fresh copy open.
  // A copy of its own (the lease needs the owner) on a file system already
  // proved is not probed again.
  if (image_stat.st_uid == ::geteuid() && lease_sees_mappings_on_ == image_stat.st_dev) {
    module->probe_sees_mappings = true;
  } else {
    module->probe_sees_mappings = ProbeSeesMappings(module->copy_path);
    if (module->probe_sees_mappings) lease_sees_mappings_on_ = image_stat.st_dev;
  }
  if (hold_exit_registrations) exits::Hold(module->id);
  heap::StartTracking(module->id, options.capture_sites);
  SetModuleName(module->id, name.c_str());
  EnterPhase(common::Phase::kLoad, *module);
  absl::StatusOr<SharedLibrary> library = absl::UnknownError("not opened");
  {
    // Static constructors run in module scope: what they allocate is the module's.
    ModuleScope scope(module->id);
    library = SharedLibrary::Open(module->copy_path);
  }
  auto fail = [&](absl::Status status) -> absl::Status {
    exits::Release(module->id);  // before its dlclose: glibc runs its static destructors there
    if (module->library) {
      // Static constructors may have started threads: their code must stay mapped.
      auto live = threads::WaitForExit(module->id, module->options.thread_grace);
      timers::Outcome timers = timers::DeleteAll(module->id, module->options.thread_grace);
      if (!live.empty() || timers.in_flight > 0) {
        std::string note =
            live.empty() ? absl::StrCat("; its static constructors left ", timers.in_flight,
                                        " timer notification(s) running, so its code stays mapped in this worker")
                         : absl::StrCat("; its static constructors left ", live.size(), " thread(s) running (",
                                        DescribeThreads(live), "), so its code stays mapped in this worker");
        spdlog::error("module={} version={} phase=load{}", module->name, module->version, note);
        parked_.push_back(std::move(module));
        return absl::Status(status.code(), absl::StrCat(status.message(), note));
      }
      tls::RunOrDiscard(module->id);
      keys::DeleteAll(module->id);
      ReleasePathsIntoCode(*module);
      {
        libraries::ClosingScope closing(module->id);
        module->library.reset();
      }
      libraries::CloseAll(module->id);
    }
    module->library.reset();
    ForgetPathsIntoCode(module->id);
    tls::Discard(module->id);
    keys::DeleteAll(module->id);
    heap::Detach(module->id);
    threads::Forget(module->id);
    fds::Forget(module->id);
    children::Forget(module->id);
    maps::Forget(module->id);
    ReleaseModuleId(module->id);
    RemoveFile(module->copy_path);
    return status;
  };
  if (!library.ok()) {
    // dlerror names the private copy; messages name the user's file.
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "cannot load ", path, ": ", absl::StrReplaceAll(library.status().message(), {{module->copy_path, path}}))));
  }
  module->library.emplace(std::move(library).value());
  RangeQuery range{&module->copy_path};
  dl_iterate_phdr(&FindRange, &range);
  if (range.end > range.start) {
    SetModuleRange(module->id, range.start, range.end);
    module->code_start = range.start;
    module->code_end = range.end;
  }

  const auto* descriptor =
      static_cast<const relib_module_descriptor*>(module->library->Symbol(RELIB_DESCRIPTOR_SYMBOL_NAME));
  if (descriptor == nullptr) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        path, " is not a relib module: it does not export the descriptor symbol ", RELIB_DESCRIPTOR_SYMBOL_NAME,
        " (define it with RELIB_MODULE or relib/module.h)")));
  }
  if (descriptor->abi_version != RELIB_ABI_VERSION) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat(path, " was built for relib module ABI version ", descriptor->abi_version,
                     "; this worker supports version ", RELIB_ABI_VERSION, " (rebuild the module)")));
  }
  if (descriptor->export_count > 0 && descriptor->exports == nullptr) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(path, ": descriptor lists ", descriptor->export_count, " exports but no export table")));
  }
  module->descriptor = descriptor;
  // `flags` came after the first modules were built: read it only if this
  // module's descriptor object is large enough to have it (its st_size).
  Dl_info symbol_info;
  void* symbol_entry = nullptr;
  if (::dladdr1(descriptor, &symbol_info, &symbol_entry, RTLD_DL_SYMENT) != 0 && symbol_entry != nullptr &&
      static_cast<const ElfW(Sym)*>(symbol_entry)->st_size >= offsetof(relib_module_descriptor, flags) + sizeof(uint32_t)) {
    module->thread_safe = (descriptor->flags & RELIB_MODULE_FLAG_THREAD_SAFE) != 0;
  }
  module->log = &log_;
  module->host_api.abi_version = RELIB_ABI_VERSION;
  module->host_api.host_context = module.get();
  module->host_api.log = &Module::Log;
  module->host_api.save_state = &Module::SaveState;
  module->host_api.load_state = &Module::LoadState;
  module->host_api.store_fd = &Module::StoreFd;
  module->host_api.take_fd = &Module::TakeFd;
  module->host_api.last_error = &Module::LastError;
  module->services = services_;
  return module;
}

absl::Status ModuleLoader::RunOnLoad(Module& module) {
  if (module.descriptor->on_load == nullptr) return absl::OkStatus();
  HostBuffer error;
  int rc;
  EnterPhase(common::Phase::kOnLoad, module);
  {
    ModuleScope scope(module.id);
    rc = module.descriptor->on_load(&module.host_api, error.abi());
  }
  // Hooks are rare: their leftovers are looked for at once.
  fds::NoteModuleRan(module.id);
  children::NoteModuleRan(module.id);
  children::Sweep();
  if (rc != RELIB_OK) {
    return absl::FailedPreconditionError(absl::StrCat("on_load of module '", module.name, "' (",
                                                      module.source_path, ") failed with code ", rc,
                                                      error.data().empty() ? "" : ": ", error.data()));
  }
  return absl::OkStatus();
}

namespace {

LoadInfo Describe(const relib_module_descriptor& descriptor, const PinningFacts& pinning, int64_t load_micros) {
  LoadInfo info;
  info.descriptor_name = descriptor.name ? descriptor.name : "";
  for (size_t i = 0; i < descriptor.export_count; ++i) {
    const char* export_name = descriptor.exports[i].name;
    info.exports.push_back(export_name ? export_name : "");
  }
  if (!pinning.unique_symbols.empty()) {
    std::vector<std::string> some(pinning.unique_symbols.begin(),
                                  pinning.unique_symbols.begin() + std::min<size_t>(3, pinning.unique_symbols.size()));
    info.warnings.push_back(absl::StrCat(
        "will never unmap: defines ", pinning.unique_symbols.size(), " STB_GNU_UNIQUE symbol(s) (",
        absl::StrJoin(some, ", "),
        "), which glibc never unloads; build with -fno-gnu-unique (relib_add_module does)"));
  }
  if (pinning.nodelete) {
    info.warnings.push_back("will never unmap: linked with -z nodelete (DF_1_NODELETE)");
  }
  info.load_micros = load_micros;
  return info;
}

}  // namespace

absl::StatusOr<LoadInfo> ModuleLoader::Load(const std::string& name, const std::string& path, uint64_t version,
                                            const ModuleOptions& options, const std::string& display_path,
                                            bool placed_in_scratch) {
  if (IsLoaded(name)) return absl::AlreadyExistsError(absl::StrCat("module '", name, "' is already loaded"));
  auto start = std::chrono::steady_clock::now();
  RELIB_ASSIGN_OR_RETURN(std::unique_ptr<Module> module,
                         Open(name, path, version, options, display_path, placed_in_scratch));
  if (absl::Status status = RunOnLoad(*module); !status.ok()) {
    std::string note;
    Discard(std::move(module), &note);
    return absl::Status(status.code(), absl::StrCat(status.message(), note));
  }
  LoadInfo info = Describe(*module->descriptor, module->pinning, MicrosSince(start));
  info.thread_safe = module->thread_safe;
  spdlog::info("loaded module={} version={} path={} copy={} micros={}", name, version, path, module->copy_path,
               info.load_micros);
  for (const auto& warning : info.warnings) spdlog::warn("module={} version={} {}", name, version, warning);
  std::unique_lock<std::shared_mutex> lock(modules_mutex_);
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
  int rc;
  EnterPhase(common::Phase::kBeforeUnload, module);
  {
    ModuleScope scope(module.id);
    rc = module.descriptor->before_unload(error.abi());
  }
  fds::NoteModuleRan(module.id);
  children::NoteModuleRan(module.id);
  children::Sweep();
  report.before_unload_micros = MicrosSince(start);
  if (rc == RELIB_OK) return absl::OkStatus();
  report.before_unload_error = absl::StrCat("code ", rc, error.data().empty() ? "" : ": ", error.data());
  if (force) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("before_unload of module '", module.name, "' version ",
                                                    module.version, " failed (", report.before_unload_error,
                                                    "); the module stays loaded (use force to unload anyway)"));
}

absl::Status ModuleLoader::CheckAndClose(Module& module, UnloadReport& report, bool keep_copy) {
  auto start = std::chrono::steady_clock::now();
  report.name = module.name;
  report.version = module.version;
  report.path = module.source_path;
  const ModuleId id = module.id;
  EnterPhase(common::Phase::kUnloadChecks, module);
  // A version discarded before its predecessor closed: glibc must know its
  // static destructors before its dlclose.
  exits::Release(id);

  // Code a thread is running must never be unmapped.
  report.live_threads = threads::WaitForExit(id, module.options.thread_grace);
  if (!report.live_threads.empty()) {
    report.refused = true;
    report.unload_micros = MicrosSince(start);
    return absl::FailedPreconditionError(absl::StrCat(
        "module '", module.name, "' version ", module.version, " still has ", report.live_threads.size(),
        " running thread(s) after ", module.options.thread_grace.count(), " ms: ",
        DescribeThreads(report.live_threads), "; not unloaded, this version keeps running"));
  }

  // A refusal must come before anything is taken apart.
  if (module.options.signals == SignalPolicy::kRefuse) {
    std::vector<CodeReference> stray = signals::Guard(id, module.code_start, module.code_end, /*reset=*/false);
    if (!stray.empty()) {
      std::vector<std::string> names;
      for (const CodeReference& ref : stray) names.push_back(ref.description);
      report.code_references = stray;
      report.refused = true;
      report.unload_micros = MicrosSince(start);
      return absl::FailedPreconditionError(absl::StrCat(
          "module '", module.name, "' version ", module.version, " left signal handler(s) into its code that it set ",
          "behind the agent's back: ", absl::StrJoin(names, ", "),
          "; not unloaded (signal policy refuse), this version keeps running"));
    }
  }

  // Timers next: no notification may enter the module while it is taken apart.
  timers::Outcome timers = timers::DeleteAll(id, module.options.thread_grace);
  report.code_references = std::move(timers.deleted);
  if (timers.in_flight > 0) {
    report.refused = true;
    report.unload_micros = MicrosSince(start);
    return absl::FailedPreconditionError(absl::StrCat(
        "module '", module.name, "' version ", module.version, " still runs ", timers.in_flight,
        " timer notification(s) after ", module.options.thread_grace.count(),
        " ms; not unloaded, this version keeps running (its timers are deleted)"));
  }

  tls::Outcome tls = tls::RunOrDiscard(id);
  report.tls_run = tls.run;
  report.tls_discarded = tls.discarded;
  report.tls_discarded_on = tls.discarded_on;

  report.pthread_keys_deleted = keys::DeleteAll(id);

  // Exit handlers run now, like at exit: before their fds are closed below.
  std::vector<CodeReference> released = ReleasePathsIntoCode(module);
  report.code_references.insert(report.code_references.end(), released.begin(), released.end());

  fds::Sweep();  // fds libc opened for it where the agent could not see
  report.open_fds = fds::Open(id);
  if (module.options.fds == FdPolicy::kClose && !report.open_fds.empty()) {
    fds::CloseAll(id);
    report.fds_closed = true;
  }

  // Processes the module started; they never outlive the worker anyway
  // (relibd kills its process group and what it adopted when it exits).
  children::Sweep();
  report.children = children::Live(id);
  if (module.options.children == ChildPolicy::kKill && !report.children.empty()) {
    children::KillAll(id);
    report.children_killed = true;
  }

  report.libraries = libraries::Open(id);

  // Sites must be symbolized while the module's code is still mapped.
  std::vector<heap::Site> sites;
  std::vector<std::string> site_names;
  if (module.options.capture_sites) {
    sites = heap::TopSites(id, 10);
    for (const auto& site : sites) {
      site_names.push_back(site.address ? Symbolize(site.address) : "(site not captured)");
    }
  }

  absl::Status closed;
  {
    libraries::ClosingScope closing(id);
    closed = module.library->Close();
  }
  module.library.reset();
  if (!closed.ok()) {
    spdlog::warn("module={} version={} phase=unload {}", module.name, module.version, std::string(closed.message()));
  }
  // After the module's own dlclose: its static destructors may have closed
  // some; what is left (its own file, among others) goes now.
  if (module.options.libraries == DlopenPolicy::kClose && !report.libraries.empty()) {
    libraries::CloseAll(id);
    report.libraries_closed = true;
  }

  report.heap_tracking = heap::Enabled();
  heap::Usage leaked = heap::LiveUsage(id);  // after static destructors ran
  report.leaked_bytes = leaked.bytes;
  report.leaked_blocks = leaked.blocks;
  for (size_t i = 0; i < sites.size(); ++i) {
    report.leak_sites.push_back({site_names[i], sites[i].bytes, sites[i].blocks});
  }
  if (module.options.leaks == LeakPolicy::kFree) {
    heap::FreeAll(id);
    report.leaks_freed = leaked.blocks > 0;
  } else {
    heap::Detach(id);
  }

  // What the module mapped goes after its static destructors ran (they may
  // still read it). Views of module files (its own copy, other modules'
  // copies: everything in the scratch directory) go under either policy: they
  // are the module's private reads, typically a symbolizer's, and each keeps
  // a module file mapped after that module's dlclose.
  report.mappings = maps::Live(id);
  if (module.options.mappings == MappingPolicy::kUnmap) {
    maps::Unmap(id);
    report.mappings_unmapped = !report.mappings.empty();
  } else {
    maps::Unmap(id, [this](const maps::Region& region) { return IsModuleFile(region.path); });
  }

  // The cheap proof first: no open description of the copy's inode is left
  // anywhere, so no mapping of it is (each holds one). Anything else (a
  // mapping, or only an fd someone keeps) is sorted out by the full scan.
  if (module.probe_sees_mappings && ProbeFileUseSettled(module.copy_path) == FileUse::kUnused) {
    report.unmapped = true;
    report.unmapped_proof = "file lease";
  } else if (auto remaining = common::ReadMappingsOfFile(0, module.copy_path); remaining.ok()) {
    report.unmapped_proof = "/proc/self/maps";
    report.unmapped = remaining->empty();
    for (const auto& mapping : *remaining) report.remaining_mappings.push_back(mapping.line);
    if (!report.unmapped) report.pin_reasons = ExplainPins(module, *remaining);
  } else {
    report.unmapped = false;
    report.remaining_mappings.push_back(
        absl::StrCat("cannot read /proc/self/maps: ", remaining.status().message()));
  }

  // Static destructors run by dlclose may have registered more; none may
  // ever run now that the code is gone.
  ForgetPathsIntoCode(id);
  tls::Discard(id);
  keys::DeleteAll(id);
  threads::Forget(id);
  fds::Forget(id);
  children::Forget(id);
  maps::Forget(id);
  ReleaseModuleId(id);
  {
    std::unique_lock<std::shared_mutex> lock(modules_mutex_);  // Usage reads ids beside us
    module.id = kHost;
  }
  report.unload_micros = MicrosSince(start);
  if (!keep_copy) RemoveFile(module.copy_path);
  return absl::OkStatus();
}

bool ModuleLoader::IsModuleFile(const std::string& path) const {
  return path.rfind(scratch_prefix_, 0) == 0;
}

std::vector<std::string> ModuleLoader::ExplainPins(const Module& module,
                                                   const std::vector<common::Mapping>& remaining) const {
  std::vector<std::string> reasons;
  // Still in the dynamic loader's list: something holds a reference.
  RangeQuery loader{&module.copy_path};
  ::dl_iterate_phdr(FindRange, &loader);
  const bool loaded = loader.end > loader.start;
  if (loaded) {
    if (!module.pinning.unique_symbols.empty()) {
      reasons.push_back(absl::StrCat("defines ", module.pinning.unique_symbols.size(),
                                     " STB_GNU_UNIQUE symbol(s); build with -fno-gnu-unique"));
    }
    if (module.pinning.nodelete) reasons.push_back("linked with -z nodelete (DF_1_NODELETE)");
    for (const libraries::Holder& holder : libraries::HoldersOf(module.copy_path)) {
      if (holder.module == module.id) {
        reasons.push_back(absl::StrCat("the module dlopen'ed its own file ", holder.references,
                                       " time(s) and did not dlclose it (--dlopen-policy close drops those "
                                       "references)"));
      } else {
        reasons.push_back(absl::StrCat("dlopen'ed by module '", ModuleName(holder.module), "' (",
                                       holder.references, " reference(s) it has not dlclosed)"));
      }
    }
    if (reasons.empty()) {
      reasons.push_back(
          "the dynamic loader still holds the library through a reference the agent did not see (no module "
          "dlopen'ed it, it has no STB_GNU_UNIQUE symbol and no DF_1_NODELETE)");
    }
  }
  // Every other mapping of the file is someone's mmap of it.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t segments_start = loader.start & ~(page - 1);
  const uintptr_t segments_end = (loader.end + page - 1) & ~(page - 1);
  std::map<ModuleId, int> views;  // holder -> mappings; kHost: nobody the agent tracks
  for (const common::Mapping& m : remaining) {
    if (loaded && m.start >= segments_start && m.end <= segments_end) continue;
    std::vector<maps::HeldRegion> held = maps::Overlapping(m.start, m.end);
    if (held.empty()) ++views[kHost];
    std::set<ModuleId> holders;
    for (const maps::HeldRegion& h : held) holders.insert(h.module);
    for (ModuleId holder : holders) ++views[holder];
  }
  for (const auto& [holder, count] : views) {
    if (holder == kHost) {
      reasons.push_back(absl::StrCat("its file is still mapped by ", count,
                                     " mmap(s) no module made through the agent (the host's, or raw system calls)"));
    } else if (holder == module.id) {
      reasons.push_back(absl::StrCat("its file is still mapped (file-backed mmap) by the module itself: ", count,
                                     " mapping(s) that could not be unmapped"));
    } else {
      reasons.push_back(absl::StrCat("its file is still mapped (file-backed mmap) by module '", ModuleName(holder),
                                     "': ", count, " mapping(s), unmapped when that module unloads"));
    }
  }
  return reasons;
}

std::vector<CodeReference> ModuleLoader::ReleasePathsIntoCode(Module& module) {
  const ModuleId id = module.id;
  std::vector<CodeReference> references = exits::Finalize(id);
  auto append = [&](std::vector<CodeReference> more) {
    references.insert(references.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
  };
  append(hooks::ReleaseAll(id));
  append(signals::RestoreAll(id));
  // The last guards: whatever still points into the module's code, however
  // it got there, is put back to the host's.
  append(signals::Guard(id, module.code_start, module.code_end, /*reset=*/true));
  append(hooks::ResetInto(module.code_start, module.code_end));
  return references;
}

void ModuleLoader::ForgetPathsIntoCode(ModuleId id) {
  exits::Discard(id);
  signals::RestoreAll(id);
  timers::DeleteAll(id, std::chrono::milliseconds(0));
  libraries::Forget(id);
}

void ModuleLoader::Discard(std::unique_ptr<Module> module, std::string* note) {
  UnloadReport report;
  if (CheckAndClose(*module, report, /*keep_copy=*/false).ok()) return;
  *note = absl::StrCat("; it left ", report.live_threads.size(), " thread(s) running (",
                       DescribeThreads(report.live_threads), "), so its code stays mapped in this worker");
  spdlog::error("module={} version={} phase=discard{}", module->name, module->version, *note);
  parked_.push_back(std::move(module));
}

absl::Status ModuleLoader::Unload(const std::string& name, bool force, UnloadReport& report) {
  auto it = modules_.find(name);  // the control thread is the only writer
  if (it == modules_.end()) return absl::NotFoundError(absl::StrCat("module '", name, "' is not loaded"));
  RELIB_RETURN_IF_ERROR(RunBeforeUnload(*it->second, force, report));
  RELIB_RETURN_IF_ERROR(CheckAndClose(*it->second, report, /*keep_copy=*/false));
  spdlog::info("unloaded module={} version={} unmapped={} leaked_bytes={}", name, report.version, report.unmapped,
               report.leaked_bytes);
  std::unique_lock<std::shared_mutex> lock(modules_mutex_);
  modules_.erase(it);
  return absl::OkStatus();
}

void ModuleLoader::FinishAfterReply() {
  for (const std::string& path : removals_after_reply_) RemoveFile(path);
  removals_after_reply_.clear();
  if (!spare_copy_.valid()) {
    // Without O_TMPFILE support there is no spare: copies create their file.
    spare_copy_ = common::UniqueFd(::open(scratch_dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  }
}

absl::StatusOr<LoadInfo> ModuleLoader::Reload(const std::string& name, const std::string& path, uint64_t version,
                                              bool force, const ModuleOptions* options, UnloadReport& report,
                                              const std::string& display_path,
                                              const std::function<void()>& before_swap, bool placed_in_scratch) {
  auto it = modules_.find(name);  // the control thread is the only writer
  if (it == modules_.end()) return absl::NotFoundError(absl::StrCat("module '", name, "' is not loaded"));
  std::unique_ptr<Module>& current = it->second;
  auto start = std::chrono::steady_clock::now();
  // A file that cannot even be opened never disturbs the running version.
  RELIB_ASSIGN_OR_RETURN(std::unique_ptr<Module> next, Open(name, path, version, options ? *options : current->options,
                                                            display_path, placed_in_scratch,
                                                            /*hold_exit_registrations=*/true));
  if (before_swap) before_swap();
  std::string ignored;
  if (absl::Status status = RunBeforeUnload(*current, force, report); !status.ok()) {
    Discard(std::move(next), &ignored);
    return status;
  }
  if (absl::Status status = CheckAndClose(*current, report, /*keep_copy=*/true); !status.ok()) {
    Discard(std::move(next), &ignored);
    return status;
  }
  // The old version's exit slots are free now: the new version's take them.
  exits::Release(next->id);

  if (absl::Status status = RunOnLoad(*next); !status.ok()) {
    std::string note;
    Discard(std::move(next), &note);
    // Roll back: load the previous version again from its private copy.
    std::string old_copy = current->copy_path;
    auto previous = Open(name, old_copy, current->version, current->options, current->source_path);
    RemoveFile(old_copy);
    absl::Status restored = previous.ok() ? RunOnLoad(**previous) : previous.status();
    if (restored.ok()) {
      std::unique_lock<std::shared_mutex> lock(modules_mutex_);
      current = std::move(previous).value();
      return absl::Status(status.code(), absl::StrCat(status.message(), note, "; version ", current->version,
                                                      " was loaded again"));
    }
    if (previous.ok()) Discard(std::move(previous).value(), &ignored);
    std::unique_lock<std::shared_mutex> lock(modules_mutex_);
    modules_.erase(it);
    return absl::Status(status.code(),
                        absl::StrCat(status.message(), note, "; loading the previous version again also failed (",
                                     restored.message(), "), the module is no longer loaded"));
  }
  removals_after_reply_.push_back(current->copy_path);  // unmapped and checked; only the name is left
  LoadInfo info = Describe(*next->descriptor, next->pinning, MicrosSince(start));
  info.thread_safe = next->thread_safe;
  spdlog::info("reloaded module={} version={}->{} path={} unmapped={}", name, current->version, version, path,
               report.unmapped);
  std::unique_lock<std::shared_mutex> lock(modules_mutex_);
  current = std::move(next);
  return info;
}

absl::StatusOr<std::string> ModuleLoader::Call(const std::string& name, const std::string& export_name,
                                               std::string_view input, uint64_t* version) {
  Module* found = nullptr;
  {
    std::shared_lock<std::shared_mutex> lock(modules_mutex_);
    auto it = modules_.find(name);
    if (it != modules_.end()) found = it->second.get();
  }
  // Stays valid: no unload or reload of `name` runs during its calls.
  if (found == nullptr) return absl::NotFoundError(absl::StrCat("module '", name, "' is not loaded"));
  Module& module = *found;
  if (version != nullptr) *version = module.version;
  const relib_module_descriptor& descriptor = *module.descriptor;
  std::vector<std::string> names;
  for (size_t i = 0; i < descriptor.export_count; ++i) {
    const relib_export& entry = descriptor.exports[i];
    if (entry.name == nullptr || entry.fn == nullptr) continue;
    if (export_name != entry.name) {
      names.push_back(entry.name);
      continue;
    }
    HostBuffer out(output_limit_);
    int rc;
    {
      ModuleScope scope(module.id);
      rc = entry.fn(input.data(), input.size(), out.abi());
    }
    // No scan per call: the catch-all scans happen at usage and unload.
    fds::NoteModuleRan(module.id);
    children::NoteModuleRan(module.id);
    // Whatever the export returned: its output is incomplete (the SDK, for
    // one, fails the call when an append is refused).
    if (out.overflowed()) {
      return absl::ResourceExhaustedError(absl::StrCat("output of export '", export_name, "' of module '", name,
                                                       "' exceeds the limit of ", out.limit(), " bytes (at least ",
                                                       out.attempted(), " bytes); raise relibd --max-message-mb"));
    }
    if (rc != RELIB_OK) {
      // gRPC carries the message in size-limited metadata: keep it short.
      constexpr size_t kMaxErrorText = 2048;
      std::string text = std::move(out.data());
      if (text.size() > kMaxErrorText) {
        size_t size = text.size();
        text.resize(kMaxErrorText);
        absl::StrAppend(&text, "... (", size, " bytes in all)");
      }
      return absl::UnknownError(absl::StrCat("export '", export_name, "' of module '", name, "' failed with code ", rc,
                                             text.empty() ? "" : ": ", text));
    }
    return std::move(out.data());
  }
  return absl::NotFoundError(absl::StrCat("module '", name, "' has no export '", export_name,
                                          "' (exports: ", names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
}

std::vector<ModuleUsage> ModuleLoader::Usage() const {
  fds::Sweep();
  std::vector<ModuleUsage> usage;
  std::shared_lock<std::shared_mutex> lock(modules_mutex_);
  for (const auto& [name, module] : modules_) {
    heap::Usage heap = heap::LiveUsage(module->id);
    usage.push_back({name, heap.bytes, heap.blocks, static_cast<int>(threads::Count(module->id)),
                     fds::Count(module->id)});
  }
  return usage;
}

}  // namespace relib::agent
