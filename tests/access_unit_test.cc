// Unit tests of the access pieces without a daemon: roles from credentials,
// --worker-limit parsing, request validation, and SO_PEERCRED on a real
// socketpair.
#include <sys/resource.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/stat.h>

#include <fstream>

#include "common/temp_dir.h"
#include "daemon/access.h"
#include "daemon/module_dirs.h"
#include "daemon/request_validation.h"
#include "daemon/worker_limits.h"
#include "tests/testing.h"

namespace relib::daemon {
namespace {

using ::testing::HasSubstr;
using relib::testing::IsOk;
using relib::testing::StatusIs;

TEST(AccessPolicyTest, RolesFromUidAndGroups) {
  AccessPolicy policy(/*self_uid=*/1000, /*view_groups=*/{50}, /*control_groups=*/{60});
  EXPECT_EQ(policy.RoleOf({1, 0, 0, {}}), Role::kControl);           // root
  EXPECT_EQ(policy.RoleOf({1, 1000, 1000, {}}), Role::kControl);     // relibd's own user
  EXPECT_EQ(policy.RoleOf({1, 2000, 2000, {50}}), Role::kView);      // supplementary view group
  EXPECT_EQ(policy.RoleOf({1, 2000, 50, {}}), Role::kView);          // primary view group
  EXPECT_EQ(policy.RoleOf({1, 2000, 2000, {50, 60}}), Role::kControl);
  EXPECT_EQ(policy.RoleOf({1, 2000, 2000, {7}}), Role::kNone);
  EXPECT_THAT(AccessPolicy::DeniedMessage(2000, Role::kControl),
              HasSubstr("permission denied (uid 2000 lacks the control role)"));
}

TEST(AccessPolicyTest, PeerCredentialsOfASocketpair) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  auto peer = ReadPeerCredentials(fds[0]);
  ASSERT_THAT(peer, IsOk());
  EXPECT_EQ(peer->uid, ::geteuid());
  EXPECT_EQ(peer->gid, ::getegid());
  EXPECT_EQ(peer->pid, ::getpid());
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(WorkerLimitTableTest, ParsesAndMergesPerGroup) {
  WorkerLimitTable table;
  EXPECT_THAT(table.Add("*:nofile=256"), IsOk());
  EXPECT_THAT(table.Add("big:memory=1G"), IsOk());
  EXPECT_THAT(table.Add("big:nofile=1024"), IsOk());
  EXPECT_THAT(table.Add("big:cpu=30"), IsOk());
  WorkerLimits big = table.For("big");
  EXPECT_EQ(big.memory_bytes, uint64_t{1} << 30);
  EXPECT_EQ(big.open_files, 1024u);
  EXPECT_EQ(big.cpu_seconds, 30u);
  EXPECT_EQ(big.core_bytes, 0u);
  WorkerLimits other = table.For("other");
  EXPECT_EQ(other.open_files, 256u);
  EXPECT_FALSE(other.memory_bytes.has_value());
  EXPECT_EQ(big.ExplainDeath({common::ExitStatus::Kind::kSignaled, SIGXCPU}, 0),
            "exceeded its CPU time limit of 30 s");
  EXPECT_THAT(big.ExplainDeath({common::ExitStatus::Kind::kSignaled, SIGABRT}, (uint64_t{1} << 30) - 4096),
              HasSubstr("exceeded its memory limit of 1 GiB"));
  EXPECT_EQ(big.ExplainDeath({common::ExitStatus::Kind::kSignaled, SIGABRT}, 100 << 20), "");
  for (const char* bad : {"memory=1G", "big:memory", "big:speed=3", "big:memory=1T", "big:nofile=2K", "big:cpu=0",
                          ":memory=1G", "big:memory=-1"}) {
    EXPECT_THAT(table.Add(bad), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(bad))) << bad;
  }
}

// relibd as an ordinary user with no --allow-module-dir: its own files (and
// root's) load, another user's or a world-writable one do not.
TEST(ModuleDirsTest, OrdinaryUserLoadsItsOwnFilesByDefault) {
  auto dir = common::TempDir::Create("/tmp", "relib-dirs-");
  ASSERT_THAT(dir, IsOk());
  std::string mine = dir->path() + "/mine.so";
  { std::ofstream(mine) << "x"; }
  ::chmod(mine.c_str(), 0644);
  auto as_me = ModuleDirs::Create({}, ::geteuid() == 0 ? 4321 : ::geteuid());
  ASSERT_THAT(as_me, IsOk());
  if (::geteuid() == 0) ASSERT_EQ(::chown(mine.c_str(), 4321, 4321), 0);
  EXPECT_THAT(as_me->Check(mine), IsOk());
  ::chmod(mine.c_str(), 0666);
  EXPECT_THAT(as_me->Check(mine), StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("every user")));
  auto as_other = ModuleDirs::Create({}, 9876);
  ASSERT_THAT(as_other, IsOk());
  ::chmod(mine.c_str(), 0644);
  EXPECT_THAT(as_other->Check(mine), StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("its owner")));
  EXPECT_THAT(as_other->Check(dir->path() + "/missing.so"), StatusIs(absl::StatusCode::kNotFound));
  // Root with no allowed directory: nothing.
  auto as_root = ModuleDirs::Create({}, 0);
  EXPECT_THAT(as_root->Check(mine), StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("--allow-module-dir")));
}

TEST(RequestValidationTest, NamesAndPaths) {
  EXPECT_THAT(ValidateName("hello-1.v2_x", "module"), IsOk());
  EXPECT_THAT(ValidateName("", "module"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateName("a/b", "worker"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker")));
  EXPECT_THAT(ValidateName(std::string(65, 'a'), "module"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidatePath("/x.so"), IsOk());
  EXPECT_THAT(ValidatePath("x.so"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be absolute")));
  EXPECT_THAT(ValidatePath(std::string("/x\0/y.so", 8)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NUL")));
}

}  // namespace
}  // namespace relib::daemon
