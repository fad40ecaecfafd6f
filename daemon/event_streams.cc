#include "daemon/event_streams.h"

#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace relib::daemon {

// One Events call, from the request gRPC matches to it until every operation
// started on it has come back through the queue: a bus subscriber whose
// bounded queue feeds one write at a time. Owns itself (self_) meanwhile;
// the bus may hold a reference a little longer. gRPC's asynchronous API
// never calls back into it inline, so its operations are started with
// mutex_ held.
class EventStreams::Stream final : public EventBus::Subscriber, public std::enable_shared_from_this<Stream> {
 public:
  enum class Op { kNew, kMetadata, kWrite, kFinish, kDone };
  struct Tag {
    Stream* stream;
    Op op;
  };

  // Asks gRPC for the next call, unless the queue is shutting down.
  static void Request(EventStreams* owner) {
    std::lock_guard<std::mutex> lock(owner->request_mutex_);
    if (owner->shut_down_) return;
    auto stream = std::shared_ptr<Stream>(new Stream(owner));
    stream->self_ = stream;
    stream->pending_ = 1;  // the call itself; its done tag counts once it began
    stream->context_.AsyncNotifyWhenDone(&stream->done_tag_);
    owner->service_.RequestEvents(&stream->context_, &stream->request_, &stream->writer_, owner->queue_.get(),
                                  owner->queue_.get(), &stream->new_tag_);
  }

  // On the queue's thread: `op` came back, `ok` as gRPC says.
  void Handle(Op op, bool ok) {
    std::unique_lock<std::mutex> lock(mutex_);
    --pending_;
    switch (op) {
      case Op::kNew:
        if (ok) {
          ++pending_;  // the done tag comes once the call is over
          lock.unlock();
          Request(owner_);  // the next caller
          Begin();
          lock.lock();
        }
        break;
      case Op::kMetadata:
      case Op::kWrite:
        writing_ = false;
        if (!ok) {
          EndLocked(grpc::Status::OK);  // the client is gone
        } else {
          WriteNextLocked();
        }
        break;
      case Op::kFinish:
        break;
      case Op::kDone:
        if (context_.IsCancelled()) EndLocked(grpc::Status::CANCELLED);
        break;
    }
    if (pending_ > 0) return;
    // Nothing of gRPC's refers to it any more.
    std::shared_ptr<Stream> last = std::move(self_);
    bool detach = attached_ && !detached_;
    detached_ = true;
    lock.unlock();
    if (detach) owner_->bus_.Detach(this);
  }

  void OnEvent(const v1::Event& event) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finishing_) return;
    if (queue_.size() >= owner_->max_backlog_) {
      EndLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             absl::StrCat("event subscriber fell behind by more than ", owner_->max_backlog_,
                                          " events (it does not read); stream ended at sequence ", event.sequence())));
      return;
    }
    queue_.push_back(event);
    WriteNextLocked();
  }
  void OnClose() override {
    std::lock_guard<std::mutex> lock(mutex_);
    EndLocked(grpc::Status::OK);
  }

 private:
  explicit Stream(EventStreams* owner)
      : owner_(owner),
        writer_(&context_),
        new_tag_{this, Op::kNew},
        metadata_tag_{this, Op::kMetadata},
        write_tag_{this, Op::kWrite},
        finish_tag_{this, Op::kFinish},
        done_tag_{this, Op::kDone} {}

  // The call began: admit it, subscribe, then tell the client the stream is
  // live, so it can act knowing nothing after that is missed.
  void Begin() {
    grpc::Status admitted = owner_->admit_(&context_);
    if (!admitted.ok()) {
      std::lock_guard<std::mutex> lock(mutex_);
      EndLocked(admitted);
      return;
    }
    {
      // Events published from here on queue up behind the metadata.
      std::lock_guard<std::mutex> lock(mutex_);
      writing_ = true;
      attached_ = true;
    }
    absl::Status attached = owner_->bus_.Attach(shared_from_this());
    std::lock_guard<std::mutex> lock(mutex_);
    if (!attached.ok()) {
      attached_ = false;
      writing_ = false;
      EndLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(attached.message())));
      return;
    }
    if (finishing_) {  // the bus closed meanwhile
      writing_ = false;
      return;
    }
    if (!StartLocked([&] { writer_.SendInitialMetadata(&metadata_tag_); })) writing_ = false;
  }

  // Starts an operation unless the queue is shutting down (gRPC forbids new
  // operations on a queue once its Shutdown began). True if started.
  template <typename F>
  bool StartLocked(F start) {
    std::lock_guard<std::mutex> lock(owner_->request_mutex_);
    if (owner_->shut_down_) return false;
    ++pending_;
    start();
    return true;
  }

  void WriteNextLocked() {
    if (writing_ || finishing_ || queue_.empty()) return;
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = StartLocked([&] { writer_.Write(current_, &write_tag_); });
  }

  // Sends the final status once (a write may still be under way: gRPC sends
  // the status after it). The bus forgets the stream.
  void EndLocked(const grpc::Status& status) {
    if (finishing_) return;
    finishing_ = true;
    queue_.clear();
    StartLocked([&] { writer_.Finish(status, &finish_tag_); });
    if (attached_ && !detached_) {
      detached_ = true;
      owner_->bus_.Detach(this);  // takes only the bus's own lock, never ours
    }
  }

  EventStreams* const owner_;
  grpc::ServerContext context_;
  v1::EventsRequest request_;
  grpc::ServerAsyncWriter<v1::Event> writer_;
  Tag new_tag_, metadata_tag_, write_tag_, finish_tag_, done_tag_;

  std::mutex mutex_;
  std::deque<v1::Event> queue_;
  v1::Event current_;  // the message of the write under way
  int pending_ = 0;    // operations started and not yet back from the queue
  bool writing_ = false;
  bool finishing_ = false;
  bool attached_ = false;
  bool detached_ = false;
  std::shared_ptr<Stream> self_;
};

EventStreams::EventStreams(v1::Relibd::WithAsyncMethod_Events<v1::Relibd::Service>& service, EventBus& bus,
                           std::unique_ptr<grpc::ServerCompletionQueue> queue,
                           std::function<grpc::Status(grpc::ServerContext*)> admit, size_t max_backlog)
    : service_(service), bus_(bus), queue_(std::move(queue)), admit_(std::move(admit)), max_backlog_(max_backlog) {
  Stream::Request(this);
  thread_ = std::thread([this] { Run(); });
}

EventStreams::~EventStreams() {
  {
    std::lock_guard<std::mutex> lock(request_mutex_);
    shut_down_ = true;
  }
  queue_->Shutdown();
  thread_.join();
}

void EventStreams::Run() {
  void* tag = nullptr;
  bool ok = false;
  // Next blocks with no deadline: this thread wakes only for a stream.
  while (queue_->Next(&tag, &ok)) {
    auto* t = static_cast<Stream::Tag*>(tag);
    t->stream->Handle(t->op, ok);
  }
}

}  // namespace relib::daemon
