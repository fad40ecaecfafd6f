// Where relibd listens by default; shared with relibctl.
#ifndef RELIB_COMMON_SOCKET_PATH_H_
#define RELIB_COMMON_SOCKET_PATH_H_

#include <string>

namespace relib::common {

// $RELIBD_SOCKET if set; /run/relibd/relibd.sock for root;
// $XDG_RUNTIME_DIR/relibd.sock otherwise; /tmp/relibd-<uid>.sock as last resort.
std::string DefaultSocketPath();

}  // namespace relib::common

#endif  // RELIB_COMMON_SOCKET_PATH_H_
