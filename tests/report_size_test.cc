// Unload reports of any size reach the client, and the error a failed reload
// or unload answers with is always the real one — never a transport error
// about metadata size (issue: a large report in trailing metadata used to
// turn an on_load failure into RESOURCE_EXHAUSTED).
#include "tests/relibd_fixture.h"

namespace relib::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kMappings = 1500;

class ReportSizeTest : public RelibdTest {
 protected:
  // A module whose unload report lists kMappings anonymous mappings.
  void LoadWithManyMappings(const std::string& name) {
    ASSERT_TRUE(Load(name, k_keys_maps).ok());
    for (int i = 0; i < kMappings; ++i) ASSERT_NE(Call(name, "map_anonymous", "4096").rfind("<error", 0), 0u);
  }
};

TEST_F(ReportSizeTest, FailedReloadWithAHugeReportAnswersWithTheRealError) {
  LoadWithManyMappings("m");
  v1::ReloadRequest request;
  request.set_name("m");
  request.set_path(k_on_load_fails);
  v1::ReloadResponse response;
  grpc::ClientContext context;  // a client with gRPC's default limits
  grpc::Status status = relibd_->stub().Reload(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("on_load"), HasSubstr("was loaded again")));
  // The trailer carries what fits, says it is cut, and the whole report is in Status.
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(common::kUnloadReportMetadataKey);
  ASSERT_NE(it, trailers.end());
  v1::UnloadReport trimmed;
  ASSERT_TRUE(trimmed.ParseFromString(std::string(it->second.data(), it->second.size())));
  EXPECT_TRUE(trimmed.truncated());
  EXPECT_EQ(trimmed.name(), "m");
  EXPECT_LT(trimmed.mappings_size(), kMappings);

  v1::StatusRequest with_reports;
  with_reports.set_with_reports(true);
  v1::StatusResponse full;
  grpc::ClientContext status_context;
  ASSERT_TRUE(relibd_->stub().Status(&status_context, with_reports, &full).ok());
  const v1::ModuleInfo* info = FindModule(full, "m");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->last_failure_report().mappings_size(), kMappings);
  EXPECT_FALSE(info->last_failure_report().truncated());
  // Without asking, Status stays small.
  EXPECT_FALSE(FindModule(Status(), "m")->has_last_failure_report());
}

TEST_F(ReportSizeTest, HugeErrorTextIsCutNotTurnedIntoATransportError) {
  ASSERT_TRUE(Load("e", k_versioned_v1).ok());
  grpc::Status status;
  Call("e", "fail", std::string(200000, 'x'), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNKNOWN) << status.error_message();
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("asked to fail"), HasSubstr("bytes in all")));
}

TEST_F(ReportSizeTest, RelibctlPrintsTheRealErrorAndTheWholeReport) {
  LoadWithManyMappings("m");
  CommandResult result = relibd_->Ctl({"reload", "m", k_on_load_fails});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, AllOf(HasSubstr("on_load"), HasSubstr("FAILED_PRECONDITION"),
                                HasSubstr("mappings left: " + std::to_string(kMappings)),
                                Not(HasSubstr("metadata"))));
  CommandResult json = relibd_->Ctl({"--json", "reload", "m", k_on_load_fails});
  EXPECT_EQ(json.exit_code, 1);
  EXPECT_THAT(json.out, HasSubstr("\"mappings\""));
  EXPECT_THAT(json.out, Not(HasSubstr("\"truncated\":true")));
}

}  // namespace
}  // namespace relib::testing
