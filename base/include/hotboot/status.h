// Errors as values: a Status that costs one pointer when OK, and Result<T>.
// No exception crosses a library boundary; messages carry their context
// (file, section, chunk, byte offset, or the CRIU/CUDA call and its code).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace hotboot {

enum class Code {
  kOk = 0,
  kInvalidArgument,  // the caller passed something unusable
  kNotFound,
  kIo,               // the OS said no (errno in the message)
  kCorrupt,          // bytes are present but wrong (checksum, bad field)
  kTruncated,        // the input ended before the structure did
  kNeedMore,         // a streaming parser needs more bytes (not an error at EOF-less input)
  kUnsupported,      // a newer version or a feature we do not implement
  kIncompatible,     // the snapshot cannot run on this host
  kTimeout,
  kFailedPrecondition,
  kInternal,
  kUntrusted,        // a trust policy is in force and the snapshot does not meet it
};

const char* CodeName(Code c);

class Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string msg)
      : rep_(code == Code::kOk ? nullptr : std::make_shared<Rep>(Rep{code, std::move(msg)})) {}

  static Status Ok() { return Status(); }
  bool ok() const { return rep_ == nullptr; }
  Code code() const { return rep_ ? rep_->code : Code::kOk; }
  const std::string& message() const {
    static const std::string empty;
    return rep_ ? rep_->msg : empty;
  }
  // "corrupt: section 'criu/pages-1.img' chunk 3 at byte 4096: checksum mismatch"
  std::string ToString() const;
  // Returns a copy whose message is "<prefix>: <message>".
  Status Prefixed(const std::string& prefix) const {
    return ok() ? *this : Status(code(), prefix + ": " + message());
  }

 private:
  struct Rep {
    Code code;
    std::string msg;
  };
  std::shared_ptr<const Rep> rep_;
};

inline Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
inline Status IoError(std::string m) { return {Code::kIo, std::move(m)}; }
inline Status Corrupt(std::string m) { return {Code::kCorrupt, std::move(m)}; }
inline Status Truncated(std::string m) { return {Code::kTruncated, std::move(m)}; }
inline Status Unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
inline Status Incompatible(std::string m) { return {Code::kIncompatible, std::move(m)}; }
inline Status Timeout(std::string m) { return {Code::kTimeout, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {Code::kFailedPrecondition, std::move(m)}; }
inline Status Untrusted(std::string m) { return {Code::kUntrusted, std::move(m)}; }
inline Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
// IoError with strerror(errno) appended: "open /x: No such file or directory".
Status ErrnoError(const std::string& what, int err);

template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status s) : v_(std::move(s)) {}     // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status ok_status;
    return ok() ? ok_status : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace hotboot

#define HOTBOOT_CONCAT_INNER(a, b) a##b
#define HOTBOOT_CONCAT(a, b) HOTBOOT_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function when `expr` is not OK.
#define HB_RETURN_IF_ERROR(expr)            \
  do {                                      \
    ::hotboot::Status hb_st_ = (expr);      \
    if (!hb_st_.ok()) return hb_st_;        \
  } while (0)

// `HB_ASSIGN_OR_RETURN(auto x, MakeX());`
#define HB_ASSIGN_OR_RETURN(lhs, expr) \
  HB_ASSIGN_OR_RETURN_IMPL(HOTBOOT_CONCAT(hb_res_, __LINE__), lhs, expr)
#define HB_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
