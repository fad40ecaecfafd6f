// Access control with real users: relibd started by root, relibctl run as
// throwaway unprivileged users (created and removed by each test); roles
// checked from the peer's credentials on every RPC; the accept loop keeps
// going when relibd runs out of fds.
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <filesystem>

#include "tests/relibd_fixture.h"
#include "tests/test_users.h"

namespace relib::testing {
namespace {

class AccessTest : public RelibdTest {
 protected:
  void SetUp() override {
    if (!TestUsers::CanCreate()) GTEST_SKIP() << "access tests create Unix users: run them as root";
    view_group_ = users_.AddGroup("v");
    control_group_ = users_.AddGroup("c");
    ASSERT_FALSE(view_group_.empty() || control_group_.empty()) << "groupadd failed";
    nobody_ = users_.AddUser("n", {});
    viewer_ = users_.AddUser("v", {view_group_});
    controller_ = users_.AddUser("c", {control_group_}, /*home=*/true);
    ASSERT_FALSE(nobody_.empty() || viewer_.empty() || controller_.empty()) << "useradd failed";
  }
  // relibd with both role groups; the socket open to every local user so
  // that the peer check (not the file mode) is what refuses.
  void StartOpenDaemon(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--socket-mode", "0666", "--view-group", view_group_, "--control-group",
                                     control_group_};
    args.insert(args.end(), extra.begin(), extra.end());
    StartDaemon(args);
    if (!relibd_) return;
    // The test dir (0700) holds the socket: let other users reach it.
    ::chmod(relibd_->dir().c_str(), 0755);
  }
  static std::string Uid(const std::string& user) { return std::to_string(TestUsers::Of(user).uid); }

  TestUsers users_;
  std::string view_group_, control_group_;
  std::string nobody_, viewer_, controller_;
};

constexpr int kExitPermissionDenied = 4;

TEST_F(AccessTest, UserWithoutRoleIsRefusedEveryMethod) {
  ASSERT_NO_FATAL_FAILURE(StartOpenDaemon());
  LoadOrDie("hello", kHelloPath);
  auto as_nobody = TestUsers::Of(nobody_);
  std::string view_denied = "permission denied (uid " + Uid(nobody_) + " lacks the view role)";
  std::string control_denied = "permission denied (uid " + Uid(nobody_) + " lacks the control role)";
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"status"}, {"events", "--count", "1"}}) {
    CommandResult r = relibd_->CtlAs(as_nobody, args);
    EXPECT_EQ(r.exit_code, kExitPermissionDenied) << args[0] << ": " << r.err;
    EXPECT_THAT(r.err, ::testing::HasSubstr(view_denied)) << args[0];
  }
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"load", "mine", kHelloCPath}, {"reload", "hello"}, {"unload", "hello"}, {"call", "hello", "greet", "x"}}) {
    CommandResult r = relibd_->CtlAs(as_nobody, args);
    EXPECT_EQ(r.exit_code, kExitPermissionDenied) << args[0] << ": " << r.err;
    EXPECT_THAT(r.err, ::testing::HasSubstr(control_denied)) << args[0];
  }
  // Nothing happened, and root is still served.
  v1::StatusResponse status = Status();
  ASSERT_EQ(status.modules_size(), 1);
  EXPECT_EQ(status.modules(0).version(), 1u);
  EXPECT_EQ(Call("hello", "greet", "root"), "Hello, root!");
}

TEST_F(AccessTest, ViewMemberCanReadStatusButNotLoadOrCall) {
  ASSERT_NO_FATAL_FAILURE(StartOpenDaemon());
  LoadOrDie("hello", kHelloPath);
  auto as_viewer = TestUsers::Of(viewer_);
  CommandResult status = relibd_->CtlAs(as_viewer, {"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, ::testing::HasSubstr("hello"));
  std::string denied = "permission denied (uid " + Uid(viewer_) + " lacks the control role)";
  CommandResult load = relibd_->CtlAs(as_viewer, {"load", "mine", kHelloCPath});
  EXPECT_EQ(load.exit_code, kExitPermissionDenied) << load.err;
  EXPECT_THAT(load.err, ::testing::HasSubstr(denied));
  CommandResult call = relibd_->CtlAs(as_viewer, {"call", "hello", "greet", "x"});
  EXPECT_EQ(call.exit_code, kExitPermissionDenied) << call.err;
  EXPECT_THAT(call.err, ::testing::HasSubstr(denied));
  // Every method that changes something needs the control role, the later ones too.
  for (std::vector<std::string> command : std::vector<std::vector<std::string>>{
           {"watch", "hello"}, {"reload-config"}, {"reload", "--all"}, {"unload", "hello"}}) {
    CommandResult r = relibd_->CtlAs(as_viewer, command);
    EXPECT_EQ(r.exit_code, kExitPermissionDenied) << command[0] << ": " << r.err;
    EXPECT_THAT(r.err, ::testing::HasSubstr(denied)) << command[0];
  }
  EXPECT_FALSE(Status().modules(0).watch());
  EXPECT_EQ(Status().modules_size(), 1);
}

TEST_F(AccessTest, ControlMemberCanLoadAndCall) {
  ASSERT_NO_FATAL_FAILURE(StartOpenDaemon());
  auto as_controller = TestUsers::Of(controller_);
  CommandResult load = relibd_->CtlAs(as_controller, {"load", "hello", kHelloPath});
  EXPECT_EQ(load.exit_code, 0) << load.err;
  CommandResult call = relibd_->CtlAs(as_controller, {"call", "hello", "greet", "ctl"});
  EXPECT_EQ(call.exit_code, 0) << call.err;
  EXPECT_THAT(call.out, ::testing::HasSubstr("Hello, ctl!"));
}

TEST_F(AccessTest, ControlMemberCannotLoadFromItsHome) {
  ASSERT_NO_FATAL_FAILURE(StartOpenDaemon());
  std::string home = TestUsers::Home(controller_);
  ASSERT_TRUE(std::filesystem::is_directory(home)) << home;
  std::string mine = home + "/mine.so";
  std::filesystem::copy_file(kHelloPath, mine);
  auto as_controller = TestUsers::Of(controller_);
  ASSERT_EQ(::chown(mine.c_str(), as_controller.uid, as_controller.gid), 0);
  CommandResult load = relibd_->CtlAs(as_controller, {"load", "mine", mine});
  EXPECT_EQ(load.exit_code, kExitPermissionDenied) << load.err;
  EXPECT_THAT(load.err, ::testing::AllOf(::testing::HasSubstr(mine),
                                         ::testing::HasSubstr("not inside an allowed module directory"),
                                         ::testing::HasSubstr("--allow-module-dir")));
  EXPECT_EQ(Status().modules_size(), 0);
  // Even in an allowed directory, a file the user owns is not trusted: they
  // could change it under relibd.
  std::string planted = relibd_->dir() + "/planted.so";
  std::filesystem::copy_file(kHelloPath, planted);
  ASSERT_EQ(::chown(planted.c_str(), as_controller.uid, as_controller.gid), 0);
  CommandResult again = relibd_->CtlAs(as_controller, {"load", "planted", planted});
  EXPECT_EQ(again.exit_code, kExitPermissionDenied) << again.err;
  EXPECT_THAT(again.err, ::testing::HasSubstr("its owner, uid " + Uid(controller_)));
}

TEST_F(AccessTest, SocketIsGroupOnlyByDefaultAndConfigurable) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--socket-group", view_group_}));
  ::chmod(relibd_->dir().c_str(), 0755);
  struct stat st{};
  ASSERT_EQ(::stat(relibd_->socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, ::getgrnam(view_group_.c_str())->gr_gid);
  EXPECT_EQ(st.st_uid, 0u);
  // Not in the socket's group: the kernel refuses the connect itself, and
  // relibctl says so instead of "is it running?".
  CommandResult r = relibd_->CtlAs(TestUsers::Of(nobody_), {"status"});
  EXPECT_EQ(r.exit_code, kExitPermissionDenied) << r.err;
  EXPECT_THAT(r.err, ::testing::HasSubstr("permission denied"));
  EXPECT_THAT(r.err, ::testing::Not(::testing::HasSubstr("is it running")));
  // In the group: through the socket, and the view role from --view-group is
  // not configured here, so Status is refused by the peer check.
  CommandResult viewer = relibd_->CtlAs(TestUsers::Of(viewer_), {"status"});
  EXPECT_EQ(viewer.exit_code, kExitPermissionDenied) << viewer.err;
  EXPECT_THAT(viewer.err, ::testing::HasSubstr("lacks the view role"));
}

TEST_F(AccessTest, SocketModeFlag) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--socket-mode", "0600"}));
  struct stat st{};
  ASSERT_EQ(::stat(relibd_->socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

// Allowed module directories (relibd as root: what an operator runs).
class ModuleDirsTest : public RelibdTest {
 protected:
  void ExpectDenied(const grpc::Status& status, const std::vector<std::string>& parts) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
    for (const auto& part : parts) EXPECT_THAT(status.error_message(), ::testing::HasSubstr(part));
  }
};

TEST_F(ModuleDirsTest, WorldWritableModuleOrDirectoryIsRefused) {
  std::string writable = Copy(kHelloPath, "writable.so");
  ::chmod(writable.c_str(), 0666);
  ExpectDenied(Load("writable", writable), {writable, "the file", "every user", "chmod go-w"});
  std::string open_dir = relibd_->dir() + "/open";
  std::filesystem::create_directory(open_dir);
  ::chmod(open_dir.c_str(), 0777);
  std::string inside = open_dir + "/hello.so";
  std::filesystem::copy_file(kHelloPath, inside);
  ::chmod(inside.c_str(), 0644);
  ExpectDenied(Load("inside", inside), {inside, "directory " + open_dir, "every user"});
  // Nothing was copied, nothing loaded; a proper file still loads.
  EXPECT_EQ(Status().modules_size(), 0);
  std::error_code ignored;
  EXPECT_TRUE(std::filesystem::is_empty(relibd_->dir() + "/good", ignored) || ignored);
  ::chmod(writable.c_str(), 0644);
  EXPECT_TRUE(Load("writable", writable).ok());
}

TEST_F(ModuleDirsTest, SymlinkOutOfAnAllowedDirectoryIsRefused) {
  auto outside = common::TempDir::Create("/tmp", "relib-outside-");
  ASSERT_THAT(outside, IsOk());
  std::string target = outside->path() + "/hello.so";
  std::filesystem::copy_file(kHelloPath, target);
  std::string link = relibd_->dir() + "/link.so";
  std::filesystem::create_symlink(target, link);
  ExpectDenied(Load("link", link), {link, target, "not inside an allowed module directory"});
}

TEST_F(ModuleDirsTest, RootWithoutAllowedDirectoriesLoadsNothing) {
  if (::geteuid() != 0) GTEST_SKIP() << "relibd as root only";
  relibd_.reset();
  ASSERT_NO_FATAL_FAILURE(StartDaemon({}, /*default_module_dirs=*/false));
  ExpectDenied(Load("hello", kHelloPath), {kHelloPath, "runs as root", "--allow-module-dir"});
  EXPECT_THAT(relibd_->Log(), ::testing::HasSubstr("every load will be refused"));
}

TEST_F(ModuleDirsTest, FileOwnedByAnotherUserIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "chown needs root";
  std::string foreign = Copy(kHelloPath, "foreign.so");
  ASSERT_EQ(::chown(foreign.c_str(), 65534, 65534), 0);
  ExpectDenied(Load("foreign", foreign), {foreign, "its owner, uid 65534"});
}

// Counts the fds open in `pid`.
int OpenFds(pid_t pid) {
  int n = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    ++n;
  }
  return n;
}

int ConnectRaw(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// relibd's accept loop must back off on EMFILE and resume by itself once fds
// are free again, for a client already waiting in the listen queue. (gRPC
// 1.51's own listener, on the base commit, passes this too: it retries after
// EMFILE as well; this guards relibd's loop.)
TEST(AcceptLoopTest, KeepsAcceptingAfterRunningOutOfFds) {
  auto relibd = RelibdProcess::Start();
  ASSERT_THAT(relibd, IsOk());
  pid_t pid = (*relibd)->process().pid();
  // Squeeze only once relibd has finished starting (its signal handling
  // needs fds too).
  for (int i = 0; i < 500 && (*relibd)->Log().find("listening on unix:") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  rlimit original{};
  ASSERT_EQ(::prlimit(pid, RLIMIT_NOFILE, nullptr, &original), 0);
  rlimit tight{static_cast<rlim_t>(OpenFds(pid) + 2), original.rlim_max};
  ASSERT_EQ(::prlimit(pid, RLIMIT_NOFILE, &tight, nullptr), 0);
  std::vector<int> clients;
  for (int i = 0; i < 8; ++i) clients.push_back(ConnectRaw((*relibd)->socket()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // A real client connects while relibd has no fd to accept it with: its
  // connection waits in the listen queue. No other connection comes later to
  // wake a listener up: relibd must retry by itself once fds are free.
  grpc::Status status;
  std::thread client([&] {
    auto channel = grpc::CreateChannel("unix:" + (*relibd)->socket(), grpc::InsecureChannelCredentials());
    auto stub = v1::Relibd::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(8));
    context.set_wait_for_ready(true);
    v1::StatusResponse response;
    status = stub->Status(&context, v1::StatusRequest(), &response);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (int fd : clients) {
    if (fd >= 0) ::close(fd);
  }
  ASSERT_EQ(::prlimit(pid, RLIMIT_NOFILE, &original, nullptr), 0);
  client.join();
  EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << (*relibd)->Log();
  EXPECT_THAT((*relibd)->Log(), ::testing::HasSubstr("Too many open files"));
}

}  // namespace
}  // namespace relib::testing
