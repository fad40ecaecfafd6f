// Who may use relibd's API: the peer credentials of a Unix-socket connection
// (SO_PEERCRED, SO_PEERGROUPS) mapped to a role (view or control).
#ifndef RELIB_DAEMON_ACCESS_H_
#define RELIB_DAEMON_ACCESS_H_

#include <sys/types.h>

#include <mutex>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

namespace relib::daemon {

// What a connection may do. Ordered: control includes view.
enum class Role { kNone = 0, kView = 1, kControl = 2 };
// "none", "view", "control".
const char* RoleName(Role role);

// Who is at the other end of a connected Unix socket, as the kernel saw it
// when the peer connected.
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS)
};

// Reads the peer of connected AF_UNIX socket `fd`. Errors: the errno of
// getsockopt.
absl::StatusOr<PeerCredentials> ReadPeerCredentials(int fd);

// Resolves a group name or a numeric gid. INVALID_ARGUMENT naming `name`
// when there is no such group.
absl::StatusOr<gid_t> ResolveGroup(const std::string& name);
// Resolves a user name or a numeric uid to (uid, primary gid).
absl::StatusOr<std::pair<uid_t, gid_t>> ResolveUser(const std::string& name);

// The role policy. Immutable after construction; thread-safe.
class AccessPolicy {
 public:
  // `self_uid`: relibd's own (effective) uid, which always has control, as
  // root does. Members (primary or supplementary) of a control group have
  // control; of a view group, view.
  AccessPolicy(uid_t self_uid, std::vector<gid_t> view_groups, std::vector<gid_t> control_groups)
      : self_uid_(self_uid), view_groups_(std::move(view_groups)), control_groups_(std::move(control_groups)) {}

  Role RoleOf(const PeerCredentials& peer) const;
  // "uid 1001 lacks the control role" plus how to grant it.
  static std::string DeniedMessage(uid_t uid, Role needed);

 private:
  static bool MemberOf(const PeerCredentials& peer, const std::vector<gid_t>& groups);
  const uid_t self_uid_;
  const std::vector<gid_t> view_groups_;
  const std::vector<gid_t> control_groups_;
};

// The credentials of live connections, keyed by gRPC's peer string of a
// connection handed over by fd ("fd:<n>"). Only names the uid in denial
// messages: authorization never depends on it (see PeerListener), because an
// fd number is reused once gRPC closes a connection. Thread-safe.
class PeerRegistry {
 public:
  void Set(int fd, const PeerCredentials& peer);
  // The uid recorded for `grpc_peer`, or -1 if unknown.
  long UidOf(const std::string& grpc_peer) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, uid_t> uids_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace relib::daemon

#endif  // RELIB_DAEMON_ACCESS_H_
