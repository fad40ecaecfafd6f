#include "daemon/worker_handle.h"

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>

#include "absl/strings/str_cat.h"
#include "boost/asio/post.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "common/frame_io.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {
namespace asio = boost::asio;

namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<std::shared_ptr<WorkerHandle>> WorkerHandle::Start(asio::io_context& io,
                                                                  const WorkerOptions& options,
                                                                  Callbacks callbacks) {
  auto scratch = common::TempDir::Create(options.run_dir, "worker-");
  if (!scratch.ok()) return scratch.status();
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return absl::ErrnoToStatus(errno, "socketpair for the worker link");
  }
  common::UniqueFd daemon_end(fds[0]);
  common::UniqueFd worker_end(fds[1]);
  common::SpawnOptions spawn;
  spawn.argv = {options.worker_path, "--link-fd", "3", "--scratch-dir", scratch->path(),
                "--log-level", options.log_level};
  spawn.fds = {{worker_end.get(), 3}};
  auto process = common::ChildProcess::Spawn(spawn);
  if (!process.ok()) return process.status();
  worker_end.Reset();
  auto handle = std::shared_ptr<WorkerHandle>(new WorkerHandle(io, std::move(process).value(),
                                                               std::move(scratch).value(),
                                                               daemon_end.Release(), std::move(callbacks)));
  asio::post(io, [handle] { handle->StartIo(); });
  return handle;
}

WorkerHandle::WorkerHandle(asio::io_context& io, common::ChildProcess process, common::TempDir scratch,
                           int link_fd, Callbacks callbacks)
    : io_(io),
      process_(std::move(process)),
      scratch_(std::move(scratch)),
      callbacks_(std::move(callbacks)),
      pid_(process_.pid()),
      started_at_unix_ms_(NowUnixMs()),
      link_(io, asio::local::stream_protocol(), link_fd),
      pidfd_watch_(io, ::dup(process_.pidfd())) {}

WorkerHandle::~WorkerHandle() = default;

void WorkerHandle::StartIo() {
  auto self = shared_from_this();
  pidfd_watch_.async_wait(asio::posix::stream_descriptor::wait_read, [self](const boost::system::error_code& ec) {
    if (ec == asio::error::operation_aborted) return;
    self->OnProcessExit();
  });
  ReadHeader();
}

void WorkerHandle::ReadHeader() {
  auto self = shared_from_this();
  asio::async_read(link_, asio::buffer(header_), [self](const boost::system::error_code& ec, size_t) {
    if (ec) {
      // EOF or error: the worker is exiting or broken; the pidfd tells how.
      if (self->alive_ && !self->stopping_) self->OnLinkClosed(ec);
      return;
    }
    uint32_t length = common::DecodeFrameHeader(self->header_);
    if (length > common::kMaxFramePayloadBytes) {
      self->Kill(absl::StrCat("worker sent a frame of ", length, " bytes (protocol error)"));
      return;
    }
    self->ReadPayload(length);
  });
}

void WorkerHandle::ReadPayload(uint32_t length) {
  payload_.resize(length);
  auto self = shared_from_this();
  asio::async_read(link_, asio::buffer(payload_), [self](const boost::system::error_code& ec, size_t) {
    if (ec) {
      if (self->alive_ && !self->stopping_) self->OnLinkClosed(ec);
      return;
    }
    v1::link::FromWorker message;
    if (!message.ParseFromString(self->payload_)) {
      self->Kill("worker sent an unparsable message (protocol error)");
      return;
    }
    self->Dispatch(message);
    self->ReadHeader();
  });
}

void WorkerHandle::Dispatch(const v1::link::FromWorker& message) {
  switch (message.message_case()) {
    case v1::link::FromWorker::kHello:
      spdlog::info("worker pid={} ready abi={}", pid_, message.hello().abi_version());
      return;
    case v1::link::FromWorker::kLog:
      if (callbacks_.on_log) callbacks_.on_log(pid_, message.log());
      return;
    case v1::link::FromWorker::kUsage:
      if (callbacks_.on_usage) callbacks_.on_usage(pid_, message.usage());
      return;
    case v1::link::FromWorker::kReply: {
      auto it = pending_.find(message.reply().id());
      if (it == pending_.end()) return;  // answered after its deadline fired
      Pending pending = std::move(it->second);
      pending_.erase(it);
      pending.timer->cancel();
      pending.done(message.reply());
      return;
    }
    case v1::link::FromWorker::MESSAGE_NOT_SET:
      return;
  }
}

void WorkerHandle::Send(v1::link::ToWorker command, std::string what, std::chrono::milliseconds deadline,
                        ReplyCallback done) {
  auto self = shared_from_this();
  asio::post(io_, [self, command = std::move(command), what = std::move(what), deadline,
                   done = std::move(done)]() mutable {
    if (!self->alive_) {
      done(absl::UnavailableError(absl::StrCat("worker pid ", self->pid_, " is not running")));
      return;
    }
    uint64_t id = self->next_id_++;
    command.set_id(id);
    std::string frame;
    if (absl::Status status = common::EncodeFrame(command, &frame); !status.ok()) {
      done(status);
      return;
    }
    Pending pending{std::move(done), std::move(what), std::make_unique<asio::steady_timer>(self->io_)};
    pending.timer->expires_after(deadline);
    pending.timer->async_wait([self, id](const boost::system::error_code& ec) {
      if (!ec) self->OnDeadline(id);
    });
    self->pending_.emplace(id, std::move(pending));
    self->write_queue_.push_back(std::move(frame));
    if (self->write_queue_.size() == 1) self->WriteNext();
  });
}

absl::StatusOr<v1::link::Reply> WorkerHandle::Request(v1::link::ToWorker command, std::string what,
                                                      std::chrono::milliseconds deadline) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::link::Reply>>>();
  auto future = promise->get_future();
  Send(std::move(command), std::move(what), deadline,
       [promise](absl::StatusOr<v1::link::Reply> reply) { promise->set_value(std::move(reply)); });
  return future.get();
}

void WorkerHandle::WriteNext() {
  auto self = shared_from_this();
  asio::async_write(link_, asio::buffer(write_queue_.front()),
                    [self](const boost::system::error_code& ec, size_t) {
                      if (ec) {
                        self->write_queue_.clear();
                        if (self->alive_) self->Kill(absl::StrCat("write to worker link failed: ", ec.message()));
                        return;
                      }
                      self->write_queue_.pop_front();
                      if (!self->write_queue_.empty()) self->WriteNext();
                    });
}

void WorkerHandle::OnDeadline(uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending pending = std::move(it->second);
  pending_.erase(it);
  std::string reason = absl::StrCat(pending.what, " did not finish within its deadline; worker pid ", pid_,
                                    " was killed");
  spdlog::error("worker pid={} phase=deadline {}", pid_, reason);
  Kill(reason);
  pending.done(absl::DeadlineExceededError(reason));
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

void WorkerHandle::Kill(const std::string& why) {
  if (!kill_reason_) kill_reason_ = why;
  process_.Signal(SIGKILL).IgnoreError();
}

void WorkerHandle::Stop(std::chrono::milliseconds grace) {
  auto self = shared_from_this();
  asio::post(io_, [self, grace] {
    if (!self->alive_) return;
    self->stopping_ = true;
    boost::system::error_code ignored;
    self->link_.shutdown(asio::socket_base::shutdown_both, ignored);
    self->stop_timer_ = std::make_unique<asio::steady_timer>(self->io_, grace);
    self->stop_timer_->async_wait([self](const boost::system::error_code& ec) {
      if (!ec && self->alive_) self->Kill("daemon is stopping");
    });
  });
}

void WorkerHandle::OnProcessExit() {
  auto status = process_.Wait();
  alive_ = false;
  std::string how = status.ok() ? status->ToString() : std::string(status.status().message());
  std::string during;
  if (!pending_.empty()) during = absl::StrCat(" during ", pending_.begin()->second.what);
  std::string reason = kill_reason_ ? absl::StrCat("worker pid ", pid_, " ", how, " (", *kill_reason_, ")")
                                    : absl::StrCat("worker pid ", pid_, " ", how, during);
  spdlog::log(stopping_ ? spdlog::level::info : spdlog::level::warn, "worker pid={} phase=exit {}", pid_, reason);
  boost::system::error_code ignored;
  link_.close(ignored);
  pidfd_watch_.close(ignored);
  if (stop_timer_) stop_timer_->cancel();
  if (link_closed_timer_) link_closed_timer_->cancel();
  // The supervisor marks the modules failed before any waiting caller learns
  // of the death, so the caller's next request sees the new state.
  if (callbacks_.on_exit) callbacks_.on_exit(pid_, reason);
  FailAllPending(reason);
}

void WorkerHandle::FailAllPending(const std::string& reason) {
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [id, entry] : pending) {
    entry.timer->cancel();
    entry.done(absl::UnavailableError(reason));
  }
}

}  // namespace relib::daemon
