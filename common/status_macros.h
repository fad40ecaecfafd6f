// Early-return helpers for absl::Status / absl::StatusOr, used across every
// internal API of relibd, the agent and relibctl.
#ifndef RELIB_COMMON_STATUS_MACROS_H_
#define RELIB_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RELIB_STATUS_CONCAT_INNER_(a, b) a##b
#define RELIB_STATUS_CONCAT_(a, b) RELIB_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RELIB_RETURN_IF_ERROR(expr)                          \
  do {                                                       \
    ::absl::Status relib_status_ = (expr);                   \
    if (!relib_status_.ok()) return relib_status_;           \
  } while (0)

// `lhs = value of expr`, or returns its status from the enclosing function.
#define RELIB_ASSIGN_OR_RETURN(lhs, expr) \
  RELIB_ASSIGN_OR_RETURN_IMPL_(RELIB_STATUS_CONCAT_(relib_statusor_, __LINE__), lhs, expr)

#define RELIB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()

#endif  // RELIB_COMMON_STATUS_MACROS_H_
