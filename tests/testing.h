// Status matchers and skips shared by every test.
#ifndef RELIB_TESTS_TESTING_H_
#define RELIB_TESTS_TESTING_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// In sanitizer builds the sanitizer owns malloc (no heap tracking, RSS
// inflated by quarantine) and misreports threads leaving through pthread_exit.
#ifdef RELIB_SANITIZED
#define SKIP_UNDER_SANITIZER() GTEST_SKIP() << "not meaningful in a sanitizer build"
#else
#define SKIP_UNDER_SANITIZER() (void)0
#endif

namespace relib::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = GetStatus(arg);
  if (!status.ok()) *result_listener << "status is " << status.ToString();
  return status.ok();
}

MATCHER_P(StatusIs, code, "has code " + std::string(absl::StatusCodeToString(code))) {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status is " << status.ToString();
  return status.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher, "has code " + std::string(absl::StatusCodeToString(code))) {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status is " << status.ToString();
  return status.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(status.message()), result_listener);
}

}  // namespace relib::testing

#endif  // RELIB_TESTS_TESTING_H_
