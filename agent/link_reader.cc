#include "agent/link_reader.h"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/frame_io.h"
#include "spdlog/spdlog.h"

namespace relib::agent {
namespace {

// The read buffer's usual size; a larger frame grows it, and it shrinks back
// once empty so that one huge frame does not pin memory.
constexpr size_t kReadChunk = 64 << 10;
constexpr size_t kKeepBuffer = 4 << 20;

void Signal(int event_fd) {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t written = ::write(event_fd, &one, sizeof(one));
}

void Consume(int event_fd) {
  uint64_t count;
  [[maybe_unused]] ssize_t drained = ::read(event_fd, &count, sizeof(count));
}

}  // namespace

LinkReader::LinkReader(DaemonLink& link, Dispatcher dispatch)
    : link_(link),
      dispatch_(std::move(dispatch)),
      epoll_(::epoll_create1(EPOLL_CLOEXEC)),
      stop_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      recall_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  absl::Status ready;
  if (!epoll_.valid() || !stop_fd_.valid() || !recall_fd_.valid()) {
    ready = absl::ErrnoToStatus(errno, "cannot create the link reader's epoll set or eventfds");
  } else {
    epoll_event event{};
    event.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    event.data.fd = link_.fd();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, link_.fd(), &event) != 0) {
      ready = absl::ErrnoToStatus(errno, "epoll_ctl for the link");
    }
    event.events = EPOLLIN;
    event.data.fd = stop_fd_.get();
    if (ready.ok() && ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_fd_.get(), &event) != 0) {
      ready = absl::ErrnoToStatus(errno, "epoll_ctl for the reader's stop eventfd");
    }
  }
  if (!ready.ok()) {
    End(ready);
    return;
  }
  thread_ = std::thread([this] { Loop(); });
}

LinkReader::~LinkReader() {
  link_.ShutdownReading();
  if (stop_fd_.valid()) Signal(stop_fd_.get());  // it then reads the end of the link
  if (thread_.joinable()) thread_.join();
}

void LinkReader::Loop() {
  // Named so its wakeups can be told from the executors' (tests, bench).
  ::pthread_setname_np(::pthread_self(), "relib-link");
  epoll_event events[2];
  while (!reading_ended_.load()) {
    int n = ::epoll_wait(epoll_.get(), events, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      End(absl::ErrnoToStatus(errno, "epoll_wait on the link"));
      return;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == stop_fd_.get()) Consume(stop_fd_.get());
    }
    {
      std::lock_guard<std::mutex> lock(token_mutex_);
      if (reading_ended_.load()) return;
      // A thread leading reads it (its release looks for what is left).
      if (token_held_) continue;
      token_held_ = true;
    }
    while (true) {
      if (Drain(/*leading=*/false) == DrainResult::kEnded) {
        std::lock_guard<std::mutex> lock(token_mutex_);
        token_held_ = false;
        return;
      }
      std::lock_guard<std::mutex> lock(token_mutex_);
      if (ReleaseLocked()) break;
    }
  }
}

LinkReader::LeadResult LinkReader::Lead(const std::function<bool()>& done) {
  {
    std::lock_guard<std::mutex> lock(token_mutex_);
    if (reading_ended_.load()) return LeadResult::kEnded;
    if (token_held_) return LeadResult::kBusy;
    token_held_ = true;
    WatchLocked(false);
  }
  pollfd fds[2] = {{link_.fd(), POLLIN, 0}, {recall_fd_.get(), POLLIN, 0}};
  // Every complete frame was handled by the last token holder: the first
  // look at the socket is the poll (a read now would mostly find nothing).
  bool read_first = false;
  while (true) {
    if (!read_first && !done()) {
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
        spdlog::warn("phase=link poll on the link while leading: {}", std::strerror(errno));
        std::lock_guard<std::mutex> lock(token_mutex_);
        token_held_ = false;
        WatchLocked(true);
        return LeadResult::kEnded;
      }
      if (fds[1].revents != 0) Consume(recall_fd_.get());
    }
    read_first = false;
    const DrainResult drained = Drain(/*leading=*/true);
    if (drained == DrainResult::kEnded) {
      std::lock_guard<std::mutex> lock(token_mutex_);
      token_held_ = false;
      return LeadResult::kEnded;
    }
    if (done()) {
      std::lock_guard<std::mutex> lock(token_mutex_);
      if (ReleaseLocked(/*look_for_more=*/!drained_short_)) return LeadResult::kLed;
      read_first = true;  // bytes came meanwhile: read them first
    }
  }
}

void LinkReader::Recall() {
  if (recall_fd_.valid()) Signal(recall_fd_.get());
}

bool LinkReader::ReleaseLocked(bool look_for_more) {
  // Right after a short recv the socket is not asked (an ioctl per lone call
  // that nearly always found nothing): turning the watch on reports bytes
  // that came in between, and the reader thread reads them.
  int pending = 0;
  if (look_for_more && !reading_ended_.load() && ::ioctl(link_.fd(), FIONREAD, &pending) == 0 && pending > 0) {
    return false;
  }
  token_held_ = false;
  WatchLocked(true);
  return true;
}

void LinkReader::WatchLocked(bool on) {
  if (watching_ == on) return;
  epoll_event event{};
  event.events = on ? EPOLLIN | EPOLLRDHUP | EPOLLET : 0;
  event.data.fd = link_.fd();
  // Turning it on reports what is already readable (the kernel polls the
  // link), so nothing that came while it was off is missed.
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, link_.fd(), &event) == 0) {
    watching_ = on;
  } else {
    spdlog::error("phase=link epoll_ctl on the link: {}", std::strerror(errno));
  }
}

LinkReader::DrainResult LinkReader::Drain(bool leading) {
  const uint64_t limit = link_.frame_limit();
  // The last recv filled less than it could: the socket held nothing more
  // then, so once its frames are handled there is nothing to read (what
  // comes later is seen by the leader's level-triggered poll, or by the
  // watch its release turns back on). Only a leader stops there: the reader
  // thread's edge-triggered watch, already harvested, would never report an
  // end of the link that came with the last bytes, so it reads until the
  // socket says EAGAIN or EOF.
  bool emptied = false;
  drained_short_ = false;
  while (true) {
    while (end_ - begin_ >= common::kFrameHeaderBytes) {
      const char* at = buffer_.data() + begin_;
      uint32_t length = common::DecodeFrameHeader(reinterpret_cast<const unsigned char*>(at));
      if (length > limit) {
        End(absl::DataLossError(
            absl::StrCat("frame length ", length, " exceeds the link limit of ", limit, " bytes")));
        return DrainResult::kEnded;
      }
      if (end_ - begin_ < common::kFrameHeaderBytes + length) break;
      v1::link::ToWorker frame;
      if (!frame.ParseFromArray(at + common::kFrameHeaderBytes, static_cast<int>(length))) {
        End(absl::DataLossError("unparsable link message"));
        return DrainResult::kEnded;
      }
      begin_ += common::kFrameHeaderBytes + length;
      Handle(frame);
    }
    // Room for the rest of the frame under way (or a chunk).
    size_t want = kReadChunk;
    if (end_ - begin_ >= common::kFrameHeaderBytes) {
      const size_t length =
          common::DecodeFrameHeader(reinterpret_cast<const unsigned char*>(buffer_.data() + begin_));
      want = std::max<size_t>(want, common::kFrameHeaderBytes + length);
    }
    if (emptied) {
      drained_short_ = true;
      return DrainResult::kDrained;
    }
    if (begin_ == end_) {
      begin_ = end_ = 0;
      if (buffer_.size() > kKeepBuffer) std::string().swap(buffer_);
    } else if (begin_ > 0 && buffer_.size() - begin_ < want) {
      std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (buffer_.size() - begin_ < want) buffer_.resize(begin_ + want);
    const size_t room = buffer_.size() - end_;
    ssize_t n = ::recv(link_.fd(), buffer_.data() + end_, room, MSG_DONTWAIT);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      emptied = leading && static_cast<size_t>(n) < room;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return DrainResult::kDrained;
    if (n == 0) {
      End(begin_ == end_ ? absl::UnavailableError("link closed") : absl::DataLossError("link closed inside a frame"));
    } else {
      End(absl::ErrnoToStatus(errno, "read from link"));
    }
    return DrainResult::kEnded;
  }
}

void LinkReader::Handle(v1::link::ToWorker& frame) {
  if (frame.command_case() != v1::link::ToWorker::kHostCallResult && dispatch_ && dispatch_(frame)) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (frame.command_case() == v1::link::ToWorker::kHostCallResult) {
    const auto& result = frame.host_call_result();
    auto it = answers_.find(result.request_id());
    // An id nobody waits for any more: its caller timed out.
    if (it != answers_.end()) {
      it->second = absl::Status(static_cast<absl::StatusCode>(result.code()), result.message());
    } else {
      spdlog::warn("phase=link relibd answered host request {} after its caller gave up: {}", result.request_id(),
                   result.message());
    }
  } else {
    commands_.push_back(std::move(frame));
  }
  changed_.notify_all();
}

void LinkReader::End(const absl::Status& why) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ended_) ended_ = why;
    // Nobody will answer now: waiting requests fail at once.
    for (auto& [id, answer] : answers_) {
      if (!answer) answer = absl::UnavailableError(absl::StrCat("the link to relibd ended: ", why.message()));
    }
    changed_.notify_all();
  }
  reading_ended_.store(true);
  if (stop_fd_.valid()) Signal(stop_fd_.get());
  Recall();
}

absl::StatusOr<std::optional<v1::link::ToWorker>> LinkReader::NextCommand(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !commands_.empty() || ended_.has_value(); });
  if (!commands_.empty()) {
    v1::link::ToWorker command = std::move(commands_.front());
    commands_.pop_front();
    return command;
  }
  if (ended_) return *ended_;
  return std::nullopt;
}

uint64_t LinkReader::Expect() {
  std::lock_guard<std::mutex> lock(mutex_);
  uint64_t id = next_id_++;
  std::optional<absl::Status> answer;
  if (ended_) answer = absl::UnavailableError(absl::StrCat("the link to relibd ended: ", ended_->message()));
  answers_.emplace(id, std::move(answer));
  return id;
}

absl::Status LinkReader::Await(uint64_t id, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = answers_.find(id);
  if (it == answers_.end()) return absl::InternalError(absl::StrCat("no host request ", id, " is waiting"));
  bool answered = changed_.wait_for(lock, timeout, [&] { return it->second.has_value(); });
  absl::Status status = answered ? *it->second
                                 : absl::DeadlineExceededError(absl::StrCat(
                                       "relibd did not answer within ", timeout.count(), " ms"));
  answers_.erase(it);
  return status;
}

void LinkReader::Forget(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  answers_.erase(id);
}

}  // namespace relib::agent
