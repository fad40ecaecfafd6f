#include "daemon/worker_handle.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "boost/asio/post.hpp"
#include "common/fd_passing.h"
#include "common/frame_io.h"
#include "common/log_text.h"
#include "daemon/orphans.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace asio = boost::asio;

namespace {

// The watchdog's period while anything is in flight; it stops after
// kWatchLinger with nothing in flight (an idle relibd does not poll). The
// linger only spares back-to-back commands a re-arm each; once relibd is
// idle it costs kWatchLinger / kWatchInterval wakeups, so it is short.
constexpr std::chrono::milliseconds kWatchInterval{20};
constexpr std::chrono::milliseconds kWatchLinger{100};
// A heartbeat older than this means the worker is not being scheduled.
constexpr int64_t kHeartbeatStallNs = 1'000'000'000;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::atomic<uint64_t> next_recorder_serial{1};

// The read buffer's usual size; a larger frame grows it, and it shrinks back
// once empty so one huge reply does not pin memory.
constexpr size_t kReadChunk = 64 << 10;
constexpr size_t kKeepReadBuffer = 4 << 20;
// The WorkerHandle whose read side this thread leads (in Lead), if any: a
// reply it completes itself needs no wake-up.
thread_local const void* leading_here = nullptr;

// A Request leads the read side only if no two Requests overlapped for this
// long (see Request).
constexpr std::chrono::milliseconds kOverlapMemory{50};
// Whether a lone Request reads its own reply at all. (An earlier version
// left the link registered with Asio, whose reactor then woke the io thread
// for every reply a Request read itself: two threads woken instead of one,
// no faster. The link is now watched through link_watch_, muted while a
// Request reads.)
constexpr bool kLoneCallReadsReply = true;

// Frame of `command` (a call whose input is empty) with `tail` as its
// input: everything but the tail, which goes on the wire from where it is.
absl::Status EncodeCallFrame(const v1::link::ToWorker& command, std::string_view tail, std::string* frame,
                             uint64_t limit) {
  using google::protobuf::io::CodedOutputStream;
  const v1::link::CallCommand& call = command.call();
  const size_t call_size = call.ByteSizeLong() + 1 + CodedOutputStream::VarintSize64(tail.size()) + tail.size();
  const size_t total = 1 + CodedOutputStream::VarintSize64(command.id()) + 1 +
                       CodedOutputStream::VarintSize64(call_size) + call_size;
  if (total > limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("message of ", total, " bytes exceeds the link limit of ", limit, " bytes"));
  }
  frame->resize(common::kFrameHeaderBytes + total - tail.size());
  common::EncodeFrameHeader(static_cast<uint32_t>(total), reinterpret_cast<unsigned char*>(frame->data()));
  google::protobuf::io::ArrayOutputStream array(frame->data() + common::kFrameHeaderBytes,
                                                static_cast<int>(frame->size() - common::kFrameHeaderBytes));
  CodedOutputStream out(&array);
  out.WriteTag(1 << 3 | 0);  // ToWorker.id
  out.WriteVarint64(command.id());
  out.WriteTag(4 << 3 | 2);  // ToWorker.call
  out.WriteVarint64(call_size);
  call.SerializeWithCachedSizes(&out);
  out.WriteTag(3 << 3 | 2);  // CallCommand.input
  out.WriteVarint64(tail.size());
  if (out.HadError()) return absl::InternalError("cannot serialize link message");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<WorkerHandle>> WorkerHandle::Start(asio::io_context& io, const WorkerOptions& options,
                                                                  std::string group, WorkerLimits limits,
                                                                  Callbacks callbacks) {
  auto scratch = common::TempDir::Create(options.run_dir, "worker-");
  if (!scratch.ok()) return scratch.status();
  auto recorder = common::FlightRecorder::Create(
      absl::StrCat("relibd.", ::getpid(), ".", next_recorder_serial.fetch_add(1)));
  if (!recorder.ok()) return recorder.status();
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return absl::ErrnoToStatus(errno, "socketpair for the worker link");
  }
  common::UniqueFd daemon_end(fds[0]);
  common::UniqueFd worker_end(fds[1]);
  common::UniqueFd link_watch(::epoll_create1(EPOLL_CLOEXEC));
  if (!link_watch.valid()) return absl::ErrnoToStatus(errno, "epoll_create1 for the worker link");
  {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = daemon_end.get();
    if (::epoll_ctl(link_watch.get(), EPOLL_CTL_ADD, daemon_end.get(), &event) != 0) {
      return absl::ErrnoToStatus(errno, "epoll_ctl for the worker link");
    }
  }
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return absl::ErrnoToStatus(errno, "socketpair for the fd channel");
  }
  common::UniqueFd daemon_channel(fds[0]);
  common::UniqueFd worker_channel(fds[1]);
  if (options.run_as) {
    // The worker's scratch dir is its own; nothing else of relibd's is.
    if (::chown(scratch->path().c_str(), options.run_as->uid, options.run_as->gid) != 0) {
      return absl::ErrnoToStatus(errno, "chown the worker's scratch dir " + scratch->path());
    }
  }
  common::SpawnOptions spawn;
  // The recorder travels as fd 5: it is relibd's (0600), never opened by name.
  spawn.argv = {options.worker_path, "--link-fd", "3", "--fd-channel-fd", "4", "--scratch-dir", scratch->path(),
                "--log-level", options.log_level, "--flight-recorder-fd", "5",
                "--max-message-bytes", std::to_string(options.max_message_bytes),
                "--max-state-bytes", std::to_string(options.max_state_bytes),
                "--invalid-free", options.invalid_free};
  spawn.fds = {{worker_end.get(), 3}, {worker_channel.get(), 4}, {recorder->fd(), 5}};
  spawn.credentials = options.run_as;
  spawn.no_new_privs = options.run_as.has_value();
  spawn.rlimits = limits.ToRlimits();
  // Everything the worker starts inherits its group: killed with it on exit.
  spawn.new_process_group = true;
  auto process = common::ChildProcess::Spawn(spawn);
  if (!process.ok()) return process.status();
  worker_end.Reset();
  worker_channel.Reset();
  auto handle = std::shared_ptr<WorkerHandle>(
      new WorkerHandle(io, std::move(process).value(), std::move(scratch).value(), std::move(recorder).value(),
                       std::move(daemon_end), std::move(link_watch), std::move(daemon_channel), std::move(group), options,
                       std::move(callbacks)));
  handle->limits_ = limits;
  asio::post(io, [handle] { handle->StartIo(); });
  return handle;
}

WorkerHandle::WorkerHandle(asio::io_context& io, common::ChildProcess process, common::TempDir scratch,
                           common::FlightRecorder recorder, common::UniqueFd link, common::UniqueFd link_watch,
                           common::UniqueFd fd_channel, std::string group, const WorkerOptions& options,
                           Callbacks callbacks)
    : io_(io),
      process_(std::move(process)),
      scratch_(std::move(scratch)),
      recorder_(std::move(recorder)),
      group_(std::move(group)),
      options_(options),
      callbacks_(std::move(callbacks)),
      pid_(process_.pid()),
      started_at_unix_ms_(NowUnixMs()),
      link_fd_(link.get()),
      link_watch_(io, link_watch.get()),
      link_watch_fd_(link_watch.Release()),
      fd_channel_(std::move(fd_channel)),
      pidfd_watch_(io, ::dup(process_.pidfd())),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      watchdog_(io) {
  link_ = std::move(link);
  watched_events_ = uint32_t{EPOLLIN};  // as Start registered it
}

WorkerHandle::~WorkerHandle() = default;

void WorkerHandle::AssignGroup(std::string group) {
  auto self = shared_from_this();
  asio::post(io_, [self, group = std::move(group)]() mutable { self->group_ = std::move(group); });
}

void WorkerHandle::StartIo() {
  auto self = shared_from_this();
  pidfd_watch_.async_wait(asio::posix::stream_descriptor::wait_read, [self](const boost::system::error_code& ec) {
    if (ec == asio::error::operation_aborted) return;
    self->OnProcessExit();
  });
  // The hello may be there already (its readiness came before the wait).
  OnLinkReady();
  // The hello (and a worker that cannot even start) is watched like a command.
  std::lock_guard<std::mutex> lock(mutex_);
  WatchLocked();
}

void WorkerHandle::WatchLocked() {
  idle_since_ = std::chrono::steady_clock::now();
  if (watching_) return;
  watching_ = true;
  auto self = shared_from_this();
  asio::post(io_, [self] {
    // The heartbeat is judged from now: nobody looked while idle.
    self->last_heartbeat_ = self->recorder_.Read(/*with_calls=*/false).heartbeat;
    self->heartbeat_changed_ns_ = common::MonotonicNanos();
    self->Watch();
  });
}

void WorkerHandle::Watch() {
  auto self = shared_from_this();
  watchdog_.expires_after(kWatchInterval);
  watchdog_.async_wait([self](const boost::system::error_code& ec) {
    if (ec || !self->alive_) {
      std::lock_guard<std::mutex> lock(self->mutex_);
      self->watching_ = false;
      return;
    }
    self->Check();
  });
}

void WorkerHandle::Check() {
  common::FlightSnapshot snapshot = recorder_.Read();
  int64_t now = common::MonotonicNanos();
  if (limits_.memory_bytes || limits_.data_bytes) SampleAddressSpace();
  if (snapshot.heartbeat != last_heartbeat_) {
    last_heartbeat_ = snapshot.heartbeat;
    heartbeat_changed_ns_ = now;
  }
  bool stalled = now - heartbeat_changed_ns_ > kHeartbeatStallNs;
  const char* how = stalled ? "; the worker's heartbeat had stopped too (process frozen or stopped)"
                            : "; the worker was alive, the module's code busy or hung";
  // Control phases (load, on_load, before_unload, unload checks).
  if (snapshot.phase != common::Phase::kIdle && callbacks_.phase_deadline && !kill_reason_) {
    std::chrono::milliseconds deadline = callbacks_.phase_deadline(snapshot.module, snapshot.phase);
    int64_t elapsed_ms = (now - snapshot.phase_started_ns) / 1'000'000;
    if (deadline.count() > 0 && elapsed_ms > deadline.count()) {
      Terminate(absl::StrCat("module '", snapshot.module, "' exceeded its ", common::PhaseName(snapshot.phase),
                             " deadline of ", deadline.count(), " ms",
                             snapshot.detail.empty() ? "" : absl::StrCat(" (export '", snapshot.detail, "')"), how),
                snapshot.module);
    }
  }
  // Every executing call against its own deadline, counted from its start.
  for (const common::CallSnapshot& call : snapshot.calls) {
    if (kill_reason_ || call.deadline_ms == 0) continue;
    if ((now - call.started_ns) / 1'000'000 > int64_t{call.deadline_ms}) {
      Terminate(absl::StrCat("module '", call.module, "' exceeded its call deadline of ", call.deadline_ms,
                             " ms (export '", call.export_name, "')", how),
                call.module);
    }
  }
  std::vector<uint64_t> overdue;
  bool keep_watching;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto clock_now = std::chrono::steady_clock::now();
    for (const auto& [id, pending] : pending_) {
      if (pending.backstop <= clock_now) overdue.push_back(id);
    }
    if (!pending_.empty() || !ready_) idle_since_ = clock_now;
    // A memory limit is judged from samples of the address space, which
    // module threads can grow between calls too: such workers stay watched.
    keep_watching = clock_now - idle_since_ < kWatchLinger || limits_.memory_bytes || limits_.data_bytes;
    if (!keep_watching) watching_ = false;
  }
  for (uint64_t id : overdue) OnDeadline(id);
  if (keep_watching) Watch();
}

void WorkerHandle::SampleAddressSpace() {
  // First field of statm: total program size in pages.
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/statm", static_cast<int>(pid_));
  common::UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  char text[64] = {};
  if (!fd.valid() || ::read(fd.get(), text, sizeof(text) - 1) <= 0) return;
  uint64_t pages = std::strtoull(text, nullptr, 10);
  peak_address_space_ = std::max<uint64_t>(peak_address_space_, pages * static_cast<uint64_t>(::getpagesize()));
}

void WorkerHandle::ArmRead() {
  if (closed_ || (read_ended_ && !writing_)) return;
  auto self = shared_from_this();
  link_watch_.async_wait(asio::posix::stream_descriptor::wait_read, [self](const boost::system::error_code& ec) {
    if (!ec) self->OnLinkReady();
  });
}

void WorkerHandle::WatchLinkLocked() {
  if (closed_) return;
  // No EPOLLIN once the read side ended: the level-triggered watch would
  // fire at once forever while queued writes wait for the socket.
  const uint32_t events = (request_reads_ || read_ended_ ? 0u : uint32_t{EPOLLIN}) |
                          (writing_ ? uint32_t{EPOLLOUT} : 0u);
  if (events == watched_events_) return;
  epoll_event event{};
  event.events = events;
  event.data.fd = link_fd_;
  // Muted means not in the set at all, and unmuting adds it again: an add
  // polls the link and wakes the io thread's wait for what is ready already.
  // (A MOD back from no interest need not: nobody waits on this inner set
  // itself, so a stale entry on its ready list would swallow the wake-up.)
  const int op = events == 0 ? EPOLL_CTL_DEL : watched_events_ == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  if (::epoll_ctl(link_watch_fd_, op, link_fd_, &event) == 0) {
    watched_events_ = events;
  } else {
    spdlog::error("worker pid={} phase=link epoll_ctl on the link watch: {}", pid_, std::strerror(errno));
  }
}

void WorkerHandle::LinkWriteFailedLocked(int error) {
  // The worker is gone or going: its exit tells how. A write error is never
  // itself a kill reason (it would hide a crash's attribution): it is
  // handled like the link closing.
  if (dying_) return;
  dying_ = true;
  auto self = shared_from_this();
  asio::post(io_, [self, error] {
    if (self->alive_ && !self->stopping_) {
      self->OnLinkClosed(boost::system::error_code(error, boost::system::system_category()));
    }
  });
}

void WorkerHandle::FlushWritesLocked() {
  while (!closed_ && !write_queue_.empty()) {
    const std::string& front = write_queue_.front();
    ssize_t n = ::send(link_fd_, front.data() + write_offset_, front.size() - write_offset_,
                       MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      write_offset_ += static_cast<size_t>(n);
      if (write_offset_ == front.size()) {
        write_queue_.pop_front();
        write_offset_ = 0;
      }
      continue;
    }
    const int error = n < 0 ? errno : EPIPE;
    if (error == EINTR) continue;
    if (error == EAGAIN || error == EWOULDBLOCK) break;  // the watch says when it takes more
    write_queue_.clear();
    write_offset_ = 0;
    LinkWriteFailedLocked(error);
  }
  if (write_queue_.empty()) writing_ = false;
  WatchLinkLocked();
}

void WorkerHandle::CloseLinkLocked() {
  link_.Reset();
  boost::system::error_code ignored;
  link_watch_.close(ignored);
}

void WorkerHandle::OnLinkReady() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    if (writing_) FlushWritesLocked();
    if (read_ended_) {
      ArmRead();
      return;
    }
    if (reading_) {
      // A Request is reading (the wait fired for queued writes, or before
      // the Request muted the watch): it reads this too. Wait again at once,
      // so what comes after it lets go is seen (see ReleaseReadLocked).
      ArmRead();
      return;
    }
    reading_ = true;
  }
  while (true) {
    if (ReadAvailable(/*on_io_thread=*/true) == ReadResult::kEnded) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (ReleaseReadLocked()) {
      ArmRead();
      return;
    }
  }
}

bool WorkerHandle::ReleaseReadLocked(bool look_for_more) {
  // Under the lock: bytes that came after the last read are read by this
  // holder; later ones wake the io thread's wait (armed while anybody reads).
  // Right after a short recv the socket is not asked (an ioctl per lone
  // call that nearly always found nothing): bytes that came in between are
  // reported by the watch the release re-adds, and read by the io thread.
  int pending = 0;
  if (look_for_more && !closed_ && !read_ended_ && ::ioctl(link_fd_, FIONREAD, &pending) == 0 && pending > 0) {
    return false;
  }
  // No other Request is woken to lead: waking it costs more than the io
  // thread's reading (its wait is armed) for calls that overlap.
  GiveReadingBackLocked();
  return true;
}

void WorkerHandle::GiveReadingBackLocked() {
  reading_ = false;
  // The io thread watches for input again; what came since the holder's
  // last read shows up at once (see WatchLinkLocked).
  request_reads_ = false;
  WatchLinkLocked();
  if (closed_ && close_deferred_) {
    close_deferred_ = false;
    auto self = shared_from_this();
    asio::post(io_, [self] {
      std::lock_guard<std::mutex> lock(self->mutex_);
      self->CloseLinkLocked();
    });
  }
}

WorkerHandle::ReadResult WorkerHandle::ReadAvailable(bool on_io_thread) {
  const uint64_t limit = common::LinkFrameLimit(options_.max_message_bytes);
  // The last recv filled less than it could: the socket held nothing more
  // then, so once its frames are delivered there is nothing to read (what
  // comes later is seen by Lead's level-triggered poll, or by the watch that
  // giving the reading back re-adds). Only a leading Request stops there:
  // the io thread's edge-triggered wait, already harvested, would never
  // report an end of the link that came with the last bytes, so it reads
  // until the socket says EAGAIN or EOF.
  bool emptied = false;
  read_short_ = false;
  while (true) {
    // Every complete frame first.
    while (read_end_ - read_begin_ >= common::kFrameHeaderBytes) {
      const char* at = read_buffer_.data() + read_begin_;
      uint32_t length = common::DecodeFrameHeader(reinterpret_cast<const unsigned char*>(at));
      if (length > limit) {
        EndReading({}, absl::StrCat("worker sent a frame of ", length, " bytes (protocol error)"));
        return ReadResult::kEnded;
      }
      if (read_end_ - read_begin_ < common::kFrameHeaderBytes + length) break;
      v1::link::FromWorker message;
      if (!message.ParseFromArray(at + common::kFrameHeaderBytes, static_cast<int>(length))) {
        EndReading({}, "worker sent an unparsable message (protocol error)");
        return ReadResult::kEnded;
      }
      read_begin_ += common::kFrameHeaderBytes + length;
      Deliver(std::move(message), on_io_thread);
    }
    // Room for the rest of the frame under way (or a chunk).
    size_t want = kReadChunk;
    if (read_end_ - read_begin_ >= common::kFrameHeaderBytes) {
      const size_t length = common::DecodeFrameHeader(
          reinterpret_cast<const unsigned char*>(read_buffer_.data() + read_begin_));
      want = std::max<size_t>(want, common::kFrameHeaderBytes + length);
    }
    if (emptied) {
      read_short_ = true;
      return ReadResult::kDrained;
    }
    if (read_begin_ == read_end_) {
      read_begin_ = read_end_ = 0;
      if (read_buffer_.size() > kKeepReadBuffer) std::string().swap(read_buffer_);
    } else if (read_begin_ > 0 && read_buffer_.size() - read_begin_ < want) {
      std::memmove(read_buffer_.data(), read_buffer_.data() + read_begin_, read_end_ - read_begin_);
      read_end_ -= read_begin_;
      read_begin_ = 0;
    }
    if (read_buffer_.size() - read_begin_ < want) read_buffer_.resize(read_begin_ + want);
    const size_t room = read_buffer_.size() - read_end_;
    ssize_t n = ::recv(link_fd_, read_buffer_.data() + read_end_, room, MSG_DONTWAIT);
    if (n > 0) {
      read_end_ += static_cast<size_t>(n);
      emptied = !on_io_thread && static_cast<size_t>(n) < room;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return ReadResult::kDrained;
    EndReading(n == 0 ? boost::system::error_code(asio::error::eof)
                      : boost::system::error_code(errno, boost::system::system_category()),
               "");
    return ReadResult::kEnded;
  }
}

void WorkerHandle::Deliver(v1::link::FromWorker message, bool on_io_thread) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (frames_to_io_ == 0) {
    if (on_io_thread) {
      lock.unlock();
      Dispatch(message);
      return;
    }
    if (message.message_case() == v1::link::FromWorker::kReply) {
      auto it = pending_.find(message.reply().id());
      if (it != pending_.end() && it->second.any_thread) {
        ReplyCallback done = std::move(it->second.done);
        pending_.erase(it);
        lock.unlock();
        ApplyReplyUsage(message.reply());
        done(std::move(*message.mutable_reply()));
        return;
      }
    }
  }
  ++frames_to_io_;
  lock.unlock();
  auto self = shared_from_this();
  asio::post(io_, [self, message = std::move(message)]() mutable {
    self->Dispatch(message);
    std::lock_guard<std::mutex> lock(self->mutex_);
    --self->frames_to_io_;
  });
}

void WorkerHandle::EndReading(boost::system::error_code ec, std::string protocol_error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    read_ended_ = true;
    ++frames_to_io_;
    ReleaseReadLocked();
    WatchLinkLocked();  // input no longer watched (queued writes still are)
  }
  auto self = shared_from_this();
  asio::post(io_, [self, ec, protocol_error = std::move(protocol_error)] {
    self->OnReadEnded(ec, protocol_error);
    std::lock_guard<std::mutex> lock(self->mutex_);
    --self->frames_to_io_;
  });
}

void WorkerHandle::OnReadEnded(const boost::system::error_code& ec, const std::string& protocol_error) {
  if (!protocol_error.empty()) {
    Kill(protocol_error);
    return;
  }
  link_eof_ = true;
  if (exit_status_) {
    Finish();
  } else if (alive_ && !stopping_) {
    OnLinkClosed(ec);
  }
}

void WorkerHandle::WakeLeader() {
  if (!wake_fd_.valid()) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t written = ::write(wake_fd_.get(), &one, sizeof(one));
}

void WorkerHandle::Lead(Waiter& waiter) {
  leading_here = this;
  struct Unmark {
    ~Unmark() { leading_here = nullptr; }
  } unmark;
  pollfd fds[2] = {{link_fd_, POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
  // The command just went out and every complete frame was delivered by the
  // last token holder: the first look at the socket is the poll (a read now
  // would mostly find nothing). The wake-up eventfd covers a reply that
  // comes another way and Finish.
  bool read_first = false;
  while (true) {
    if (!read_first && ::poll(fds, wake_fd_.valid() ? 2 : 1, -1) < 0 && errno != EINTR) {
      std::lock_guard<std::mutex> lock(mutex_);
      GiveReadingBackLocked();
      return;
    }
    if (!read_first && fds[1].revents != 0) {
      uint64_t count;
      [[maybe_unused]] ssize_t drained = ::read(wake_fd_.get(), &count, sizeof(count));
    }
    read_first = false;
    const ReadResult read = ReadAvailable(/*on_io_thread=*/false);
    if (read == ReadResult::kEnded) return;  // the token is let go
    bool finished;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      {
        std::lock_guard<std::mutex> waiter_lock(waiter.mutex);
        finished = waiter.done;
      }
      // Another Request began: the io thread reads for both from now.
      finished = finished || closed_ || blocked_requests_ > 1;
      if (finished && ReleaseReadLocked(/*look_for_more=*/!read_short_)) return;
    }
    // Bytes came in meanwhile: read them before letting go.
    read_first = finished;
  }
}

void WorkerHandle::Dispatch(v1::link::FromWorker& message) {
  switch (message.message_case()) {
    case v1::link::FromWorker::kHello:
      spdlog::info("worker pid={} group={} ready abi={}", pid_, group_, message.hello().abi_version());
      ready_ = true;
      if (callbacks_.on_ready) callbacks_.on_ready(pid_);
      return;
    case v1::link::FromWorker::kLog:
      if (callbacks_.on_log) callbacks_.on_log(pid_, message.log());
      return;
    case v1::link::FromWorker::kUsage: {
      if (callbacks_.on_usage) callbacks_.on_usage(pid_, message.usage());
      if (message.usage().request_id() == 0) return;
      std::shared_ptr<std::promise<void>> waiter;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = usage_waiters_.find(message.usage().request_id());
        if (it == usage_waiters_.end()) return;  // its caller stopped waiting
        waiter = std::move(it->second);
        usage_waiters_.erase(it);
      }
      waiter->set_value();
      return;
    }
    case v1::link::FromWorker::kSaveState: {
      absl::Status saved = callbacks_.on_save_state
                               ? callbacks_.on_save_state(pid_, message.save_state())
                               : absl::FailedPreconditionError("relibd keeps no state saved in this worker");
      AnswerHostCall(message.save_state().request_id(), saved);
      return;
    }
    case v1::link::FromWorker::kStoreFd: {
      // The worker sent the fd before this message.
      auto fd = common::ReceiveFd(fd_channel_.get(), /*blocking=*/false);
      absl::Status stored;
      if (!fd.ok()) {
        spdlog::error("worker pid={} phase=fd-store module={} key={}: {}", pid_, message.store_fd().module(),
                      common::EscapeForLog(message.store_fd().key(), 64), fd.status().ToString());
        stored = absl::Status(fd.status().code(), absl::StrCat("relibd did not receive the fd: ", fd.status().message()));
      } else if (callbacks_.on_store_fd) {
        stored = callbacks_.on_store_fd(pid_, message.store_fd(), std::move(fd).value());
      } else {
        stored = absl::FailedPreconditionError("relibd keeps no fds stored in this worker");
      }
      AnswerHostCall(message.store_fd().request_id(), stored);
      return;
    }
    case v1::link::FromWorker::kReply: {
      ApplyReplyUsage(message.reply());
      ReplyCallback done;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = pending_.find(message.reply().id());
        if (it == pending_.end()) return;  // answered after its deadline fired
        done = std::move(it->second.done);
        pending_.erase(it);
      }
      done(std::move(*message.mutable_reply()));
      return;
    }
    case v1::link::FromWorker::MESSAGE_NOT_SET:
      return;
  }
}

void WorkerHandle::ApplyReplyUsage(const v1::link::Reply& reply) {
  if (reply.has_usage() && callbacks_.on_usage) callbacks_.on_usage(pid_, reply.usage());
}

void WorkerHandle::Send(v1::link::ToWorker command, std::string what, std::chrono::milliseconds deadline,
                        ReplyCallback done, std::vector<common::UniqueFd> fds) {
  SendCommand(std::move(command), std::move(what), deadline, std::move(done), /*any_thread=*/false, std::move(fds),
              {});
}

void WorkerHandle::SendCommand(v1::link::ToWorker command, std::string what, std::chrono::milliseconds deadline,
                               ReplyCallback done, bool any_thread, std::vector<common::UniqueFd> fds,
                               std::string_view tail) {
  const auto backstop = deadline.count() > 0 ? std::chrono::steady_clock::now() + deadline
                                             : std::chrono::steady_clock::time_point::max();
  std::unique_lock<std::mutex> lock(mutex_);
  if (closed_ && answer_after_reap_) {
    // Answered with the others once the dead worker is reaped.
    pending_.emplace(next_id_++, Pending{std::move(done), std::move(what), backstop, any_thread});
    return;
  }
  if (closed_) {
    std::string reason = exit_reason_;
    lock.unlock();
    done(absl::UnavailableError(reason));
    return;
  }
  uint64_t id = next_id_++;
  if (dying_) {
    // Finish() answers with how it ended (a worker that could not even
    // start must say why, not just "not running").
    pending_.emplace(id, Pending{std::move(done), std::move(what), backstop, any_thread});
    return;
  }
  command.set_id(id);
  std::string frame;
  const uint64_t limit = common::LinkFrameLimit(options_.max_message_bytes);
  if (absl::Status status = tail.empty() ? common::EncodeFrame(command, &frame, limit)
                                         : EncodeCallFrame(command, tail, &frame, limit);
      !status.ok()) {
    lock.unlock();
    done(status);
    return;
  }
  // Never blocks: a channel too full to take the fds, or broken part-way,
  // cannot be trusted to line up with later commands.
  for (const common::UniqueFd& fd : fds) {
    if (absl::Status sent = common::SendFd(fd_channel_.get(), fd.get(), /*nonblocking=*/true); !sent.ok()) {
      pending_.emplace(id, Pending{std::move(done), std::move(what), backstop, any_thread});
      dying_ = true;
      auto self = shared_from_this();
      asio::post(io_, [self, why = absl::StrCat("cannot pass stored fds to the worker: ", sent.message())] {
        self->Kill(why);
      });
      return;
    }
  }
  pending_.emplace(id, Pending{std::move(done), std::move(what), backstop, any_thread});
  WriteLocked(std::move(frame), tail);
  WatchLocked();
}

bool WorkerHandle::PollUsage(std::chrono::milliseconds timeout) {
  auto waiter = std::make_shared<std::promise<void>>();
  auto answered = waiter->get_future();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_ || dying_) return false;
    id = next_id_++;
    v1::link::ToWorker request;
    request.set_id(id);
    request.mutable_usage_request();
    std::string frame;
    if (!common::EncodeFrame(request, &frame).ok()) return false;
    usage_waiters_.emplace(id, waiter);
    WriteLocked(std::move(frame));
  }
  bool ok = answered.wait_for(timeout) == std::future_status::ready;
  if (!ok) {
    std::lock_guard<std::mutex> lock(mutex_);
    usage_waiters_.erase(id);
  }
  return ok;
}

void WorkerHandle::AnswerHostCall(uint64_t request_id, const absl::Status& status) {
  if (finished_ || !alive_ || stopping_) return;  // nobody left to answer, or no way to
  v1::link::ToWorker answer;
  auto* result = answer.mutable_host_call_result();
  result->set_request_id(request_id);
  result->set_code(static_cast<int>(status.code()));
  result->set_message(std::string(status.message()));
  std::string frame;
  if (absl::Status encoded = common::EncodeFrame(answer, &frame, common::LinkFrameLimit(options_.max_message_bytes));
      !encoded.ok()) {
    spdlog::error("worker pid={} phase=link cannot answer host request {}: {}", pid_, request_id, encoded.ToString());
    return;
  }
  Write(std::move(frame));
}

void WorkerHandle::Write(std::string frame) {
  std::lock_guard<std::mutex> lock(mutex_);
  WriteLocked(std::move(frame));
}

void WorkerHandle::WriteLocked(std::string frame, std::string_view tail) {
  if (closed_) return;
  if (!writing_) {
    // The common case: the socket takes the whole frame now, from this thread.
    const size_t total = frame.size() + tail.size();
    size_t done = 0;
    while (done < total) {
      iovec iov[2];
      int count = 0;
      if (done < frame.size()) iov[count++] = {frame.data() + done, frame.size() - done};
      const size_t tail_done = done > frame.size() ? done - frame.size() : 0;
      if (tail.size() > tail_done) iov[count++] = {const_cast<char*>(tail.data()) + tail_done, tail.size() - tail_done};
      msghdr message{};
      message.msg_iov = iov;
      message.msg_iovlen = static_cast<size_t>(count);
      ssize_t n = ::sendmsg(link_fd_, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      const int error = n < 0 ? errno : EPIPE;
      if (error == EINTR) continue;
      if (error == EAGAIN || error == EWOULDBLOCK) break;
      LinkWriteFailedLocked(error);
      return;
    }
    if (done == total) return;
    // The rest waits for the io thread (a copy: the tail is the caller's).
    if (done < frame.size()) {
      frame.erase(0, done);
      frame.append(tail.data(), tail.size());
    } else {
      frame.assign(tail.substr(done - frame.size()));
    }
    writing_ = true;
    write_queue_.push_back(std::move(frame));
    write_offset_ = 0;
    WatchLinkLocked();  // the io thread writes the rest when the socket takes it
    return;
  }
  frame.append(tail.data(), tail.size());
  write_queue_.push_back(std::move(frame));
}

absl::StatusOr<v1::link::Reply> WorkerHandle::Request(v1::link::ToWorker command, std::string what,
                                                      std::chrono::milliseconds deadline,
                                                      std::vector<common::UniqueFd> fds, std::string_view tail,
                                                      const std::function<void()>& sent) {
  // Shared with the reply callback, which wakes the waiting thread after it
  // lets go of the mutex (woken under it, the thread would block on the
  // mutex at once: two more context switches per reply, seen in traces).
  auto waiter = std::make_shared<Waiter>();
  const auto now = std::chrono::steady_clock::now();
  bool lead;
  {
    // A lone Request reads its own reply: it takes the read token and mutes
    // the io thread's watch before the command goes out, so the reply wakes
    // only this thread. Requests that overlap, or did lately, leave the
    // reading to the io thread: under load, handing the token from one
    // Request to the next costs more than the hop it saves.
    std::lock_guard<std::mutex> lock(mutex_);
    if (++blocked_requests_ > 1) last_overlap_ = now;
    // Without the wake-up eventfd a reply answered another way (an encode
    // error, Finish) could leave the leader in its first poll: no lead then.
    lead = kLoneCallReadsReply && wake_fd_.valid() && !reading_ && !read_ended_ &&
           !closed_ && !dying_ && blocked_requests_ == 1 && now - last_overlap_ > kOverlapMemory;
    if (lead) {
      reading_ = true;
      request_reads_ = true;
      WatchLinkLocked();
    }
  }
  if (lead) {
    std::lock_guard<std::mutex> lock(waiter->mutex);
    waiter->leading = true;
  }
  SendCommand(
      std::move(command), std::move(what), deadline,
      [this, waiter](absl::StatusOr<v1::link::Reply> reply) {
        bool wake_leader;
        {
          std::lock_guard<std::mutex> lock(waiter->mutex);
          waiter->reply = std::move(reply);
          waiter->done = true;
          wake_leader = waiter->leading && leading_here != this;
        }
        if (wake_leader) WakeLeader();
        waiter->wake.notify_one();
      },
      /*any_thread=*/true, std::move(fds), tail);
  if (sent) sent();
  if (lead) {
    Lead(*waiter);
    std::lock_guard<std::mutex> lock(waiter->mutex);
    waiter->leading = false;
  }
  absl::StatusOr<v1::link::Reply> reply;
  {
    std::unique_lock<std::mutex> lock(waiter->mutex);
    waiter->wake.wait(lock, [&] { return waiter->done; });
    reply = std::move(waiter->reply);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  --blocked_requests_;
  return reply;
}

void WorkerHandle::OnDeadline(uint64_t id) {
  std::string what;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    what = it->second.what;
  }
  if (kill_reason_) return;
  common::FlightSnapshot snapshot = recorder_.Read();
  Terminate(absl::StrCat(what, " did not finish within its deadline (the worker stopped answering)"),
            snapshot.module);
}

void WorkerHandle::OnLinkClosed(const boost::system::error_code& ec) {
  // Usually the process is dying and its pidfd is about to say how; give it
  // a moment so the exit status, not this EOF, is what gets reported.
  spdlog::debug("worker pid={} phase=link link closed: {}", pid_, ec.message());
  auto self = shared_from_this();
  link_closed_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(500));
  link_closed_timer_->async_wait([self, ec](const boost::system::error_code& timer_ec) {
    if (!timer_ec && self->alive_) self->Kill("worker closed its link: " + ec.message());
  });
}

void WorkerHandle::Terminate(const std::string& why, const std::string& blamed_module) {
  if (kill_reason_ || !alive_) return;
  kill_reason_ = why;
  killed_by_deadline_ = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dying_ = true;
  }
  blamed_module_ = blamed_module;
  spdlog::error("worker pid={} group={} phase=deadline {}; sending SIGTERM", pid_, group_, why);
  process_.Signal(SIGTERM).IgnoreError();
  auto self = shared_from_this();
  kill_timer_ = std::make_unique<asio::steady_timer>(io_, options_.term_grace);
  kill_timer_->async_wait([self](const boost::system::error_code& ec) {
    if (!ec && self->alive_) self->process_.Signal(SIGKILL).IgnoreError();
  });
}

void WorkerHandle::Kill(const std::string& why) {
  if (!kill_reason_) kill_reason_ = why;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dying_ = true;
  }
  process_.Signal(SIGKILL).IgnoreError();
}

void WorkerHandle::Stop(std::chrono::milliseconds grace) {
  auto self = shared_from_this();
  asio::post(io_, [self, grace] {
    if (!self->alive_) return;
    self->stopping_ = true;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      if (!self->closed_) ::shutdown(self->link_fd_, SHUT_WR);
    }
    self->stop_timer_ = std::make_unique<asio::steady_timer>(self->io_, grace);
    self->stop_timer_->async_wait([self](const boost::system::error_code& ec) {
      if (!ec && self->alive_) self->Kill("daemon is stopping");
    });
  });
}

void WorkerHandle::OnProcessExit() {
  // Nothing the worker started outlives it: its group now, while the zombie
  // worker still holds the group id; then what escaped the group and came to
  // relibd (a subreaper) when the worker's last thread was gone.
  KillWorkerGroup(pid_);
  // Escaped processes have been handed to relibd by now (the kernel
  // reparents them before the pidfd turns readable); they go before the
  // restart can start, or a restored module could find their ports or locks.
  KillAdoptedProcesses(std::chrono::milliseconds(1000));
  if (std::optional<common::ExitStatus> ended = process_.EndedWithoutReaping()) {
    // Killed by a signal: how it ended is known, so the restart need not
    // wait for the reap — which waits for the worker's last threads to exit
    // and, on a busy machine, took 2-13 ms inside waitid even with WNOHANG.
    // The reap and the clean-up follow on this thread.
    exit_status_ = *ended;
    reap_pending_ = true;
    ReapLater();
  } else {
    auto status = process_.Wait();
    exit_status_ = status.ok() ? *status : common::ExitStatus{};
  }
  alive_ = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dying_ = true;
  }
  if (link_eof_) {
    Finish();
    return;
  }
  // Read what the worker wrote before it died (logs, usage) before closing.
  auto self = shared_from_this();
  drain_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(200));
  drain_timer_->async_wait([self](const boost::system::error_code& ec) {
    if (!ec) self->Finish();
  });
}

void WorkerHandle::ReapLater() {
  // Waiting for the worker's last threads happens off the io thread, which
  // meanwhile reads the replies of the restart; only the reap itself (then
  // immediate) and the clean-up come back to it.
  auto self = shared_from_this();
  auto reaped = [self] {
    self->process_.Wait().IgnoreError();  // after the wait below: does not block
    KillAdoptedProcesses(std::chrono::milliseconds(1000));
    self->reap_pending_ = false;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      self->answer_after_reap_ = false;
    }
    // Callers hear of the death once nothing of the worker is left.
    if (self->deferred_failure_) self->FailAllPending(*std::exchange(self->deferred_failure_, std::nullopt));
  };
  if (options_.reap_threads == nullptr) {
    asio::post(io_, std::move(reaped));
    return;
  }
  // The thread is joined before the io_context is destroyed (ReapThreads'
  // contract), so its post never reaches a destroyed io_context.
  int pidfd = ::fcntl(process_.pidfd(), F_DUPFD_CLOEXEC, 0);
  options_.reap_threads->Run([self, pidfd, reaped = std::move(reaped)]() mutable {
    if (pidfd >= 0) {
      siginfo_t info{};
      while (::waitid(P_PIDFD, pidfd, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
      }
      ::close(pidfd);
    }
    asio::post(self->io_, std::move(reaped));
  });
}

void WorkerHandle::Finish() {
  if (finished_) return;
  finished_ = true;
  common::FlightSnapshot snapshot = recorder_.Read();
  std::string how = exit_status_->ToString();
  std::string first_pending;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!pending_.empty()) first_pending = pending_.begin()->second.what;
  }
  std::string reason;
  WorkerExit exit;
  // Died of the very signal its crash handler recorded: that crash is the
  // story, whatever relibd meant to do (only a deadline's kill outranks it).
  const bool crashed_itself = snapshot.crash_signal != 0 &&
                              exit_status_->kind == common::ExitStatus::Kind::kSignaled &&
                              exit_status_->code == snapshot.crash_signal;
  if (kill_reason_ && !(crashed_itself && !killed_by_deadline_)) {
    reason = absl::StrCat("worker pid ", pid_, " ", how, " (", *kill_reason_, ")");
    exit.blamed_module = blamed_module_;
  } else {
    std::string during;
    if (!first_pending.empty()) during = absl::StrCat(" during ", first_pending);
    if (snapshot.phase != common::Phase::kIdle) {
      absl::StrAppend(&during, " (phase ", common::PhaseName(snapshot.phase), " of module '", snapshot.module, "'",
                      snapshot.detail.empty() ? "" : absl::StrCat(", export '", snapshot.detail, "'"), ")");
    }
    // The calls that were running, the crashing module's first.
    std::vector<const common::CallSnapshot*> calls;
    for (const auto& call : snapshot.calls) {
      if (snapshot.crash_signal != 0 && call.module == snapshot.crash_module) calls.insert(calls.begin(), &call);
      else calls.push_back(&call);
    }
    for (const common::CallSnapshot* call : calls) {
      absl::StrAppend(&during, " (phase call of module '", call->module, "', export '", call->export_name, "')");
    }
    std::string where;
    if (snapshot.crash_signal != 0 && !snapshot.crash_module.empty()) {
      where = absl::StrCat(" in code of module '", snapshot.crash_module, "'");
      if (!snapshot.crash_note.empty()) absl::StrAppend(&where, " (", snapshot.crash_note, ")");
    }
    if (std::string limit = limits_.ExplainDeath(*exit_status_, peak_address_space_); !limit.empty()) {
      where += absl::StrCat(" (", limit, ")");
    } else if (exit_status_->kind == common::ExitStatus::Kind::kSignaled && exit_status_->code == SIGKILL) {
      where += " (not sent by relibd: the OOM killer or an operator)";
    }
    reason = absl::StrCat("worker pid ", pid_, " ", how, where, during);
    exit.blamed_module = snapshot.crash_signal != 0 ? snapshot.crash_module : snapshot.module;
    // Killed from outside while one module's calls alone ran: theirs.
    if (exit.blamed_module.empty() && !snapshot.calls.empty()) {
      bool one = true;
      for (const auto& call : snapshot.calls) one = one && call.module == snapshot.calls.front().module;
      if (one) exit.blamed_module = snapshot.calls.front().module;
    }
  }
  exit.reason = reason;
  exit.ready = ready_;
  spdlog::log(stopping_ ? spdlog::level::info : spdlog::level::warn, "worker pid={} group={} phase=exit {}", pid_,
              group_, reason);
  boost::system::error_code ignored;
  {
    // Writers on other threads check closed_ under the lock: none writes to
    // the descriptor once it is closed (its number may be reused).
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    dying_ = true;
    exit_reason_ = reason;
    answer_after_reap_ = reap_pending_;
    write_queue_.clear();
    write_offset_ = 0;
    writing_ = false;
    if (reading_) {
      // A Request reads the link now: it closes it when it lets go (the
      // descriptor's number must not be reused under it).
      close_deferred_ = true;
      WakeLeader();
      link_watch_.close(ignored);
    } else {
      CloseLinkLocked();
    }
    for (auto& [id, waiter] : usage_waiters_) waiter->set_value();
    usage_waiters_.clear();
  }
  pidfd_watch_.close(ignored);
  watchdog_.cancel();
  for (auto* timer : {stop_timer_.get(), link_closed_timer_.get(), kill_timer_.get(), drain_timer_.get()}) {
    if (timer) timer->cancel();
  }
  // The supervisor marks the modules first, so a caller woken below already
  // sees the new state.
  if (callbacks_.on_exit) callbacks_.on_exit(pid_, exit);
  if (reap_pending_) {
    deferred_failure_ = reason;  // answered once reaped (ReapLater)
  } else {
    FailAllPending(reason);
  }
}

void WorkerHandle::FailAllPending(const std::string& reason) {
  std::map<uint64_t, Pending> pending;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending = std::move(pending_);
    pending_.clear();
  }
  absl::StatusCode code = killed_by_deadline_ ? absl::StatusCode::kDeadlineExceeded : absl::StatusCode::kUnavailable;
  for (auto& [id, entry] : pending) entry.done(absl::Status(code, reason));
}

}  // namespace relib::daemon
