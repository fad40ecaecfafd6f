// LinkReader against a real socketpair: what relibd sends last (frames, then
// the end of the link) is all seen, however it lines up with the reads.
#include "agent/link_reader.h"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "common/frame_io.h"
#include "gtest/gtest.h"

namespace relib::agent {
namespace {

TEST(LinkReaderTest, AFrameAndTheEndOfTheLinkThatCameTogetherAreBothSeen) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  common::UniqueFd relibd_end(fds[1]);
  v1::link::ToWorker command;
  command.set_id(7);
  command.mutable_usage_request();
  std::string frame;
  ASSERT_TRUE(common::EncodeFrame(command, &frame).ok());
  // Both are in the socket before the reader's first look (relibd's Stop()
  // shuts its writing side right after its last frame): one wake-up, one
  // read that takes less than it asked for, and the end behind it.
  ASSERT_EQ(::write(relibd_end.get(), frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
  ASSERT_EQ(::shutdown(relibd_end.get(), SHUT_WR), 0);
  DaemonLink link{common::UniqueFd(fds[0]), common::UniqueFd()};
  LinkReader reader(link);
  auto first = reader.NextCommand(std::chrono::seconds(5));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->id(), 7u);
  auto second = reader.NextCommand(std::chrono::seconds(5));
  ASSERT_FALSE(second.ok()) << "the end of the link was never seen (a command or a timeout instead)";
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

}  // namespace
}  // namespace relib::agent
