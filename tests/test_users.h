// Throwaway Unix users and groups for access tests (created with useradd /
// groupadd, removed in the destructor). Only root can make them: tests skip
// with a message otherwise.
#ifndef RELIB_TESTS_TEST_USERS_H_
#define RELIB_TESTS_TEST_USERS_H_

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/child_process.h"
#include "tests/relibd_process.h"

namespace relib::testing {

class TestUsers {
 public:
  // Names are suffixed with the test process's pid: parallel tests never
  // share (or delete) each other's users.
  TestUsers() : suffix_(std::to_string(::getpid())) {}
  ~TestUsers() {
    for (const auto& user : users_) RunCommand({"/usr/sbin/userdel", "-f", user});
    for (const auto& group : groups_) RunCommand({"/usr/sbin/groupdel", group});
  }
  static bool CanCreate() { return ::geteuid() == 0 && ::access("/usr/sbin/useradd", X_OK) == 0; }

  // Creates group `base`+suffix; returns its name ("" on failure).
  std::string AddGroup(const std::string& base) {
    std::string name = absl::StrCat("rlt", base, suffix_);
    CommandResult r = RunCommand({"/usr/sbin/groupadd", name});
    if (r.exit_code != 0) return "";
    groups_.push_back(name);
    return name;
  }
  // Creates user `base`+suffix (no home dir unless `home`) in `groups`.
  std::string AddUser(const std::string& base, const std::vector<std::string>& groups, bool home = false) {
    std::string name = absl::StrCat("rlt", base, suffix_);
    std::vector<std::string> argv = {"/usr/sbin/useradd", home ? "-m" : "-M", "-N", "-s", "/usr/sbin/nologin"};
    std::string list;
    for (const auto& g : groups) list += (list.empty() ? "" : ",") + g;
    if (!list.empty()) argv.insert(argv.end(), {"-G", list});
    argv.push_back(name);
    CommandResult r = RunCommand(argv);
    if (r.exit_code != 0) return "";
    users_.push_back(name);
    return name;
  }
  // Credentials as a login would have them: uid, primary gid, all groups.
  static common::SpawnOptions::Credentials Of(const std::string& user) {
    common::SpawnOptions::Credentials c;
    passwd* pw = ::getpwnam(user.c_str());
    if (pw == nullptr) return c;
    c.uid = pw->pw_uid;
    c.gid = pw->pw_gid;
    int count = 64;
    c.groups.resize(count);
    if (::getgrouplist(user.c_str(), pw->pw_gid, c.groups.data(), &count) < 0) count = 0;
    c.groups.resize(count);
    return c;
  }
  static std::string Home(const std::string& user) {
    passwd* pw = ::getpwnam(user.c_str());
    return pw ? pw->pw_dir : "";
  }

 private:
  std::string suffix_;
  std::vector<std::string> users_;
  std::vector<std::string> groups_;
};

}  // namespace relib::testing

#endif  // RELIB_TESTS_TEST_USERS_H_
