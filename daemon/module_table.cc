#include "daemon/module_table.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"

namespace relib::daemon {
namespace {

constexpr char kTableFile[] = "table.pb";

absl::Status WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& dir) {
  common::UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fsync ", dir));
  return absl::OkStatus();
}

// Copies `from` to `to` the durable way: a temp file beside `to`, fsync,
// rename. Nothing is left at `to` or beside it on error.
absl::Status DurableCopy(const std::string& from, const std::string& to) {
  common::UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("open ", from));
  std::string temp = to + ".tmp";
  common::UniqueFd out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("create ", temp));
  absl::Status status;
  // In the kernel (no trip of every byte through user space) while it can;
  // across file systems that do not support that, through a buffer.
  bool kernel_copy = true;
  char buffer[1 << 16];
  while (status.ok()) {
    ssize_t n;
    if (kernel_copy) {
      n = ::copy_file_range(in.get(), nullptr, out.get(), nullptr, 1 << 20, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        kernel_copy = false;  // nothing was copied by the failed call: go on from the same offsets
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) status = absl::ErrnoToStatus(errno, absl::StrCat("copy ", from, " to ", temp));
      if (n <= 0) break;
      continue;
    }
    n = ::read(in.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = absl::ErrnoToStatus(errno, absl::StrCat("read ", from));
    if (n <= 0) break;
    status = WriteAll(out.get(), buffer, static_cast<size_t>(n), temp);
  }
  if (status.ok() && ::fsync(out.get()) != 0) status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", temp));
  if (status.ok() && ::rename(temp.c_str(), to.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename ", temp));
  }
  if (!status.ok()) ::unlink(temp.c_str());
  return status;
}

// The fields a restart needs; the rest (stats, exports, pids) belongs to one run.
v1::ModuleInfo Persistent(const v1::ModuleInfo& module) {
  v1::ModuleInfo kept;
  kept.set_name(module.name());
  kept.set_path(module.path());
  kept.set_version(module.version());
  kept.set_worker(module.worker());
  *kept.mutable_options() = module.options();
  kept.set_watch(module.watch());    // watch-and-reload stays on across restarts
  kept.set_source(module.source());  // config-owned modules stay the config file's
  return kept;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModuleTable>> ModuleTable::Open(const std::string& state_dir) {
  std::string dir = state_dir + "/modules";
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot create ", dir, ": ", error.message()));
  ::chmod(dir.c_str(), 0700);
  std::unique_ptr<ModuleTable> table(new ModuleTable(dir));
  std::string path = dir + "/" + kTableFile;
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::stringstream bytes;
    bytes << in.rdbuf();
    v1::ModuleTable stored;
    if (!stored.ParseFromString(bytes.str())) {
      return absl::DataLossError(absl::StrCat("module table ", path, " is damaged (move it away to start empty)"));
    }
    std::lock_guard<std::mutex> lock(table->mutex_);
    for (const auto& entry : stored.entries()) table->entries_[entry.module().name()] = entry;
  }
  // Temp files of a write that a crash interrupted.
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.path().extension() == ".tmp") std::filesystem::remove(entry.path(), error);
  }
  return table;
}

absl::Status ModuleTable::Save() {
  v1::ModuleTable table;
  for (const auto& [name, entry] : entries_) *table.add_entries() = entry;
  std::string bytes;
  table.SerializeToString(&bytes);
  std::string path = dir_ + "/" + kTableFile, temp = path + ".tmp";
  common::UniqueFd out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("create ", temp));
  absl::Status status = WriteAll(out.get(), bytes.data(), bytes.size(), temp);
  if (status.ok() && ::fsync(out.get()) != 0) status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", temp));
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename ", temp));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return SyncDirectory(dir_);
}

absl::Status ModuleTable::Put(const v1::ModuleInfo& module, const std::string& file) {
  std::string copy = absl::StrCat(module.name(), ".v", module.version(), ".so");
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(module.name());
  std::string old_copy = it == entries_.end() ? "" : it->second.copy();
  if (old_copy != copy) {
    if (absl::Status copied = DurableCopy(file, dir_ + "/" + copy); !copied.ok()) return copied;
  }
  v1::ModuleTableEntry entry;
  *entry.mutable_module() = Persistent(module);
  entry.set_copy(copy);
  std::optional<v1::ModuleTableEntry> previous;
  if (it != entries_.end()) previous = it->second;
  entries_[module.name()] = entry;
  if (absl::Status saved = Save(); !saved.ok()) {
    if (previous) {
      entries_[module.name()] = *previous;
    } else {
      entries_.erase(module.name());
    }
    if (old_copy != copy) ::unlink((dir_ + "/" + copy).c_str());
    return saved;
  }
  if (!old_copy.empty() && old_copy != copy) ::unlink((dir_ + "/" + old_copy).c_str());
  return absl::OkStatus();
}

absl::Status ModuleTable::Remove(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::OkStatus();
  v1::ModuleTableEntry removed = it->second;
  entries_.erase(it);
  if (absl::Status saved = Save(); !saved.ok()) {
    entries_[name] = removed;
    return saved;
  }
  ::unlink((dir_ + "/" + removed.copy()).c_str());
  return absl::OkStatus();
}

std::vector<ModuleTable::Entry> ModuleTable::Entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Entry> out;
  for (const auto& [name, entry] : entries_) out.push_back({entry.module(), dir_ + "/" + entry.copy()});
  return out;
}

}  // namespace relib::daemon
