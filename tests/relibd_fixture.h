// Test fixture: a real relibd per test plus typed helpers for its API.
#ifndef RELIB_TESTS_RELIBD_FIXTURE_H_
#define RELIB_TESTS_RELIBD_FIXTURE_H_

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/api_metadata.h"
#include "common/proc_maps.h"
#include "grpcpp/grpcpp.h"
#include "tests/relibd_process.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {

class RelibdTest : public ::testing::Test {
 protected:
  void StartDaemon(const std::vector<std::string>& args = {}, bool default_module_dirs = true) {
    auto relibd = RelibdProcess::Start(args, default_module_dirs);
    ASSERT_THAT(relibd, IsOk());
    relibd_ = std::move(relibd).value();
  }
  void SetUp() override { StartDaemon(); }
  void TearDown() override {
    if (HasFailure() && relibd_) std::cerr << "---- relibd log ----\n" << relibd_->Log();
  }

  grpc::Status Load(const std::string& name, const std::string& path, v1::LoadResponse* out = nullptr,
                    const v1::ModuleOptions& options = {}, const std::string& worker = "") {
    v1::LoadRequest request;
    request.set_name(name);
    request.set_path(path);
    *request.mutable_options() = options;
    request.set_worker(worker);
    v1::LoadResponse response;
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Load(&context, request, &response);
    if (out) *out = response;
    return status;
  }
  grpc::Status Reload(const std::string& name, const std::string& path, v1::ReloadResponse* out = nullptr,
                      bool force = false) {
    v1::ReloadRequest request;
    request.set_name(name);
    request.set_path(path);
    request.set_force(force);
    v1::ReloadResponse response;
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Reload(&context, request, &response);
    if (out) *out = response;
    return status;
  }
  // On failure, `out->report` holds the report the daemon attached, if any.
  grpc::Status Unload(const std::string& name, v1::UnloadResponse* out = nullptr, bool force = false) {
    v1::UnloadRequest request;
    request.set_name(name);
    request.set_force(force);
    v1::UnloadResponse response;
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Unload(&context, request, &response);
    if (!status.ok()) {
      const auto& trailers = context.GetServerTrailingMetadata();
      auto it = trailers.find(common::kUnloadReportMetadataKey);
      if (it != trailers.end()) {
        response.mutable_report()->ParseFromString(std::string(it->second.data(), it->second.size()));
      }
    }
    if (out) *out = response;
    return status;
  }
  // Loads or fails the test; returns the worker pid hosting the module.
  pid_t LoadOrDie(const std::string& name, const std::string& path, const v1::ModuleOptions& options = {},
                  const std::string& worker = "") {
    v1::LoadResponse response;
    grpc::Status status = Load(name, path, &response, options, worker);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.module().worker_pid();
  }
  // The whole file, or "" if it cannot be read.
  static std::string ReadAll(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // The export's output, or "<error CODE: message>".
  std::string Call(const std::string& name, const std::string& export_name, const std::string& input = "",
                   grpc::Status* status_out = nullptr) {
    v1::CallRequest request;
    request.set_name(name);
    request.set_export_name(export_name);
    request.set_input(input);
    v1::CallResponse response;
    grpc::ClientContext context;
    grpc::Status status = relibd_->stub().Call(&context, request, &response);
    if (status_out) *status_out = status;
    if (!status.ok()) return "<error " + std::to_string(status.error_code()) + ": " + status.error_message() + ">";
    return response.output();
  }
  v1::StatusResponse Status() {
    v1::StatusResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(relibd_->stub().Status(&context, v1::StatusRequest(), &response).ok());
    return response;
  }
  // Waits until Status reports usage for `name` satisfying `done` (usage is
  // fetched from the worker by every Status, and pushed after every lifecycle command).
  template <typename Predicate>
  v1::ModuleStats WaitForStats(const std::string& name, Predicate done) {
    v1::ModuleStats stats;
    for (int i = 0; i < 200; ++i) {
      v1::StatusResponse status = Status();
      if (const v1::ModuleInfo* info = FindModule(status, name)) {
        stats = info->stats();
        if (done(stats)) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return stats;
  }
  // Waits (up to 10 s) until module `name` is in `state`; returns its info.
  v1::ModuleInfo WaitForState(const std::string& name, v1::ModuleState state) {
    v1::ModuleInfo info;
    for (int i = 0; i < 400; ++i) {
      v1::StatusResponse status = Status();
      if (const v1::ModuleInfo* found = FindModule(status, name)) {
        info = *found;
        if (info.state() == state) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return info;
  }
  const v1::ModuleInfo* FindModule(const v1::StatusResponse& status, const std::string& name) {
    for (const auto& module : status.modules()) {
      if (module.name() == name) return &module;
    }
    return nullptr;
  }
  // Mappings in `pid` of module copies in this test's run dir.
  std::vector<std::string> ModuleMappings(pid_t pid, const std::string& needle = "") {
    std::vector<std::string> found;
    auto mappings = common::ReadMappings(pid);
    EXPECT_THAT(mappings, IsOk());
    if (!mappings.ok()) return found;
    for (const auto& m : *mappings) {
      if (m.path.rfind(relibd_->dir(), 0) == 0 && m.path.find(needle) != std::string::npos) found.push_back(m.line);
    }
    return found;
  }
  std::string Copy(const char* from, const std::string& name) {
    std::string to = relibd_->dir() + "/" + name;
    std::filesystem::remove(to);
    std::filesystem::copy_file(from, to);
    return to;
  }

  std::unique_ptr<RelibdProcess> relibd_;
};

}  // namespace relib::testing

#endif  // RELIB_TESTS_RELIBD_FIXTURE_H_
