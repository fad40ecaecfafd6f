#include "daemon/self_probe.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "relib/v1/relibd.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace relib::daemon {

std::string StatusLine(const v1::StatusResponse& status) {
  int loaded = 0, failed = 0, other = 0;
  for (const auto& module : status.modules()) {
    if (module.state() == v1::MODULE_STATE_LOADED) {
      ++loaded;
    } else if (module.state() == v1::MODULE_STATE_FAILED) {
      ++failed;
    } else {
      ++other;
    }
  }
  std::string line = absl::StrCat(loaded, " loaded, ", failed, " failed");
  if (other > 0) absl::StrAppend(&line, ", ", other, " restarting");
  absl::StrAppend(&line, "; ", status.workers_size(), " workers");
  return line;
}

SelfProbe::SelfProbe(std::string target, std::chrono::milliseconds interval, const systemd::Notifier& notifier)
    : target_(std::move(target)), interval_(interval), notifier_(notifier) {
  thread_ = std::thread([this] { Loop(); });
}

SelfProbe::~SelfProbe() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wakeup_.notify_all();
  thread_.join();
}

bool SelfProbe::ProbeOnce(v1::StatusResponse* status) {
  grpc::ChannelArguments args;
  // A connection of its own every time: a shared, already open connection
  // would answer even when the listener no longer accepts.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(target_, grpc::InsecureChannelCredentials(), args);
  auto stub = v1::Relibd::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::min<std::chrono::milliseconds>(interval_, std::chrono::seconds(5)));
  grpc::Status answer = stub->Status(&context, v1::StatusRequest(), status);
  if (!answer.ok()) {
    spdlog::warn("phase=self-probe {} did not answer: {}; not feeding the watchdog", target_,
                 answer.error_message());
  }
  return answer.ok();
}

void SelfProbe::Loop() {
  std::string last_status;
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    lock.unlock();
    v1::StatusResponse status;
    if (ProbeOnce(&status)) {
      notifier_.Watchdog();
      std::string line = StatusLine(status);
      if (line != last_status) notifier_.Status(line);
      last_status = line;
    }
    lock.lock();
    wakeup_.wait_for(lock, interval_, [this] { return stop_; });
  }
}

}  // namespace relib::daemon
