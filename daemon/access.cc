#include "daemon/access.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <charconv>

#include "absl/strings/str_cat.h"

namespace relib::daemon {
namespace {

// A whole-string decimal number, or false.
template <typename T>
bool ParseId(const std::string& text, T* out) {
  if (text.empty()) return false;
  unsigned long value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return false;
  *out = static_cast<T>(value);
  return true;
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kNone: return "none";
    case Role::kView: return "view";
    case Role::kControl: return "control";
  }
  return "?";
}

absl::StatusOr<PeerCredentials> ReadPeerCredentials(int fd) {
  PeerCredentials peer;
  ucred cred{};
  socklen_t length = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) {
    return absl::ErrnoToStatus(errno, "getsockopt SO_PEERCRED");
  }
  peer.pid = cred.pid;
  peer.uid = cred.uid;
  peer.gid = cred.gid;
  // The peer's supplementary groups as of connect(); ERANGE tells the size.
  peer.groups.resize(64);
  length = static_cast<socklen_t>(peer.groups.size() * sizeof(gid_t));
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, peer.groups.data(), &length) != 0) {
    if (errno != ERANGE) return absl::ErrnoToStatus(errno, "getsockopt SO_PEERGROUPS");
    peer.groups.resize(length / sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, peer.groups.data(), &length) != 0) {
      return absl::ErrnoToStatus(errno, "getsockopt SO_PEERGROUPS");
    }
  }
  peer.groups.resize(length / sizeof(gid_t));
  return peer;
}

absl::StatusOr<gid_t> ResolveGroup(const std::string& name) {
  gid_t gid;
  if (ParseId(name, &gid)) return gid;
  group entry{}, *found = nullptr;
  std::vector<char> buffer(16384);
  int rc = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
  if (rc != 0 || found == nullptr) return absl::InvalidArgumentError(absl::StrCat("no such group '", name, "'"));
  return found->gr_gid;
}

absl::StatusOr<std::pair<uid_t, gid_t>> ResolveUser(const std::string& name) {
  passwd entry{}, *found = nullptr;
  std::vector<char> buffer(16384);
  uid_t uid;
  int rc = ParseId(name, &uid) ? ::getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found)
                               : ::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
  if (rc != 0 || found == nullptr) return absl::InvalidArgumentError(absl::StrCat("no such user '", name, "'"));
  return std::make_pair(found->pw_uid, found->pw_gid);
}

bool AccessPolicy::MemberOf(const PeerCredentials& peer, const std::vector<gid_t>& groups) {
  for (gid_t gid : groups) {
    if (peer.gid == gid || std::find(peer.groups.begin(), peer.groups.end(), gid) != peer.groups.end()) return true;
  }
  return false;
}

Role AccessPolicy::RoleOf(const PeerCredentials& peer) const {
  if (peer.uid == 0 || peer.uid == self_uid_ || MemberOf(peer, control_groups_)) return Role::kControl;
  if (MemberOf(peer, view_groups_)) return Role::kView;
  return Role::kNone;
}

std::string AccessPolicy::DeniedMessage(uid_t uid, Role needed) {
  return absl::StrCat("permission denied (uid ", uid, " lacks the ", RoleName(needed),
                      " role); relibd grants it to root, its own user and members of --", RoleName(needed),
                      "-group groups");
}

void PeerRegistry::Set(int fd, const PeerCredentials& peer) {
  std::lock_guard<std::mutex> lock(mutex_);
  uids_[absl::StrCat("fd:", fd)] = peer.uid;
}

long PeerRegistry::UidOf(const std::string& grpc_peer) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = uids_.find(grpc_peer);
  return it == uids_.end() ? -1 : static_cast<long>(it->second);
}

}  // namespace relib::daemon
