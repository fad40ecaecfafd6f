// Output and input sizes: an export's output over what relibd can deliver
// fails that call with RESOURCE_EXHAUSTED (the worker lives on), outputs and
// inputs above gRPC's old 4 MiB default pass with the default limit, and an
// input over the limit is refused cleanly by the daemon.
#include <string>

#include "grpcpp/grpcpp.h"
#include "tests/relibd_fixture.h"
#include "tests/test_paths.h"
#include "tests/testing.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class MessageSizeTest : public RelibdTest {
 protected:
  void SetUp() override {}  // each test starts relibd with its own limit

  // A stub whose own limits never get in the way: the daemon's limit is the
  // one under test.
  std::unique_ptr<v1::Relibd::Stub> UnlimitedStub() {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return v1::Relibd::NewStub(
        grpc::CreateCustomChannel("unix:" + relibd_->socket(), grpc::InsecureChannelCredentials(), args));
  }
  grpc::Status CallThrough(v1::Relibd::Stub& stub, const std::string& name, const std::string& export_name,
                           const std::string& input, std::string* output) {
    v1::CallRequest request;
    request.set_name(name);
    request.set_export_name(export_name);
    request.set_input(input);
    v1::CallResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    grpc::Status status = stub.Call(&context, request, &response);
    *output = response.output();
    return status;
  }
};

TEST_F(MessageSizeTest, OutputOverTheLimitFailsThatCallAndTheWorkerLivesOn) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--max-message-mb", "1"}));
  v1::LoadResponse bystander, big;
  ASSERT_TRUE(Load("bystander", kHelloPath, &bystander).ok());
  ASSERT_TRUE(Load("big", k_big_output, &big).ok());
  pid_t worker = bystander.module().worker_pid();
  ASSERT_EQ(big.module().worker_pid(), worker);

  auto stub = UnlimitedStub();
  std::string output;
  grpc::Status status = CallThrough(*stub, "big", "output", "1100000", &output);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("output of export 'output' of module 'big' exceeds the limit of "),
                    HasSubstr("(at least 1100000 bytes)"), HasSubstr("--max-message-mb")));

  // The limit it names is what can really be delivered through a 1 MiB limit.
  std::string message = status.error_message();
  size_t at = message.find("the limit of ") + 13;
  uint64_t limit = std::stoull(message.substr(at));
  EXPECT_GT(limit, 1000000u);
  EXPECT_LT(limit, 1u << 20);
  ASSERT_TRUE(CallThrough(*stub, "big", "output", std::to_string(limit), &output).ok());
  EXPECT_EQ(output.size(), limit);
  status = CallThrough(*stub, "big", "output", std::to_string(limit + 1), &output);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();

  // Same worker, both modules still answer.
  v1::StatusResponse now = Status();
  EXPECT_EQ(FindModule(now, "big")->worker_pid(), worker);
  EXPECT_EQ(FindModule(now, "bystander")->worker_pid(), worker);
  EXPECT_EQ(Call("bystander", "greet", "you"), "Hello, you!");
  EXPECT_EQ(Call("big", "ping"), "pong");

  // relibctl says the same.
  CommandResult ctl = relibd_->Ctl({"--max-message-mb", "1", "call", "big", "output", "1100000"});
  EXPECT_EQ(ctl.exit_code, 1);
  EXPECT_THAT(ctl.err, AllOf(HasSubstr("exceeds the limit of"), HasSubstr("RESOURCE_EXHAUSTED")));
}

TEST_F(MessageSizeTest, EightMiBOutputAndInputPassWithTheDefaultLimit) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  ASSERT_TRUE(Load("big", k_big_output).ok());
  const size_t size = 8u << 20;
  auto stub = UnlimitedStub();
  std::string output;
  ASSERT_TRUE(CallThrough(*stub, "big", "output", std::to_string(size), &output).ok());
  EXPECT_EQ(output.size(), size);
  ASSERT_TRUE(CallThrough(*stub, "big", "input_size", std::string(size, 'i'), &output).ok());
  EXPECT_EQ(output, std::to_string(size));

  // relibctl's default agrees with relibd's.
  CommandResult ctl = relibd_->Ctl({"call", "big", "output", std::to_string(size)});
  EXPECT_EQ(ctl.exit_code, 0) << ctl.err;
  EXPECT_EQ(ctl.out.size(), size);
  ctl = relibd_->Ctl({"call", "big", "input_size", "-"}, std::string(size, 'i'));
  EXPECT_EQ(ctl.exit_code, 0) << ctl.err;
  EXPECT_THAT(ctl.out, HasSubstr(std::to_string(size)));
}

TEST_F(MessageSizeTest, InputOverTheLimitIsRefusedAndTheDaemonStaysUp) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--max-message-mb", "1"}));
  v1::LoadResponse big;
  ASSERT_TRUE(Load("big", k_big_output, &big).ok());
  auto stub = UnlimitedStub();
  std::string output;
  grpc::Status status = CallThrough(*stub, "big", "input_size", std::string(2u << 20, 'i'), &output);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("larger than max"));

  // relibctl with the same limit refuses to send it; with a larger one the
  // daemon refuses it. Either way a clear RESOURCE_EXHAUSTED.
  for (const std::string limit : {"1", "8"}) {
    CommandResult ctl =
        relibd_->Ctl({"--max-message-mb", limit, "call", "big", "input_size", "-"}, std::string(2u << 20, 'i'));
    EXPECT_EQ(ctl.exit_code, 1) << limit;
    EXPECT_THAT(ctl.err, AllOf(HasSubstr("larger than max"), HasSubstr("RESOURCE_EXHAUSTED"))) << limit;
  }

  // The daemon and the worker are untouched; an input within the limit works.
  ASSERT_TRUE(CallThrough(*stub, "big", "input_size", std::string(512u << 10, 'i'), &output).ok());
  EXPECT_EQ(output, std::to_string(512u << 10));
  EXPECT_EQ(FindModule(Status(), "big")->worker_pid(), big.module().worker_pid());
  auto exited = relibd_->process().TryReap();
  ASSERT_TRUE(exited.ok());
  EXPECT_FALSE(exited->has_value());
}

}  // namespace
}  // namespace relib::testing
