// relibd as generic gRPC tools see it: grpc.health.v1 answers SERVING, and a
// client that knows nothing of relibd's API (no generated relib code: it
// builds its own descriptor pool from what reflection returns) finds the
// service, its methods and message types, and calls Status dynamically.
#include <future>
#include <set>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "tests/relibd_process.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

namespace pb = google::protobuf;
namespace reflection = grpc::reflection::v1alpha;

class ReflectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto relibd = RelibdProcess::Start();
    ASSERT_THAT(relibd, IsOk());
    relibd_ = std::move(relibd).value();
    channel_ = grpc::CreateChannel("unix:" + relibd_->socket(), grpc::InsecureChannelCredentials());
  }
  std::unique_ptr<RelibdProcess> relibd_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ReflectionTest, HealthAnswersServing) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest request;  // "" = the server as a whole
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub->Check(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(ReflectionTest, AClientDiscoversAndCallsTheApiThroughReflectionAlone) {
  auto stub = reflection::ServerReflection::NewStub(channel_);
  grpc::ClientContext context;
  auto stream = stub->ServerReflectionInfo(&context);

  reflection::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  reflection::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> services;
  for (const auto& service : response.list_services_response().service()) services.insert(service.name());
  EXPECT_TRUE(services.count("grpc.health.v1.Health")) << "health service not listed";
  std::string api;
  for (const auto& name : services) {
    if (name.rfind("relib.", 0) == 0) api = name;
  }
  ASSERT_FALSE(api.empty()) << "no relib service listed";

  request.set_file_containing_symbol(api);
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(response.has_file_descriptor_response()) << response.error_response().error_message();
  stream->WritesDone();

  // A pool of our own: files may arrive in any order, so add each once its
  // dependencies are in.
  pb::DescriptorPool pool;
  std::vector<pb::FileDescriptorProto> files;
  for (const auto& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    files.emplace_back().ParseFromString(bytes);
  }
  for (size_t added = 0, round = 0; added < files.size() && round < files.size() + 1; ++round) {
    for (const auto& file : files) {
      if (pool.FindFileByName(file.name()) != nullptr) continue;
      bool ready = true;
      for (const auto& dependency : file.dependency()) ready = ready && pool.FindFileByName(dependency) != nullptr;
      if (ready && pool.BuildFile(file) != nullptr) ++added;
    }
  }
  const pb::ServiceDescriptor* service = pool.FindServiceByName(api);
  ASSERT_NE(service, nullptr);
  std::set<std::string> methods;
  for (int i = 0; i < service->method_count(); ++i) methods.insert(service->method(i)->name());
  for (const char* expected : {"Load", "Reload", "Unload", "Call", "Status", "Events"}) {
    EXPECT_TRUE(methods.count(expected)) << expected;
  }

  // Call Status with messages built from the discovered descriptors only.
  const pb::MethodDescriptor* status_method = service->FindMethodByName("Status");
  ASSERT_NE(status_method, nullptr);
  pb::DynamicMessageFactory factory(&pool);
  std::unique_ptr<pb::Message> status_request(factory.GetPrototype(status_method->input_type())->New());
  std::string wire;
  ASSERT_TRUE(status_request->SerializeToString(&wire));
  grpc::Slice slice(wire);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub generic(channel_);
  grpc::ClientContext call_context;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&call_context, "/" + api + "/Status", grpc::StubOptions(), &request_buffer, &response_buffer,
                    [&](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response_buffer.Dump(&slices).ok());
  std::string answer;
  for (const auto& s : slices) answer.append(reinterpret_cast<const char*>(s.begin()), s.size());
  std::unique_ptr<pb::Message> status_response(factory.GetPrototype(status_method->output_type())->New());
  ASSERT_TRUE(status_response->ParseFromString(answer));
  const pb::FieldDescriptor* pid = status_method->output_type()->FindFieldByName("daemon_pid");
  ASSERT_NE(pid, nullptr);
  EXPECT_EQ(status_response->GetReflection()->GetInt32(*status_response, pid), relibd_->process().pid());
}

}  // namespace
}  // namespace relib::testing
