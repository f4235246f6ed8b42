#include "hotboot/status.h"

#include <cstring>

namespace hotboot {

const char* CodeName(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotFound: return "not found";
    case Code::kIo: return "I/O error";
    case Code::kCorrupt: return "corrupt";
    case Code::kTruncated: return "truncated";
    case Code::kNeedMore: return "need more data";
    case Code::kUnsupported: return "unsupported";
    case Code::kIncompatible: return "incompatible";
    case Code::kTimeout: return "timeout";
    case Code::kFailedPrecondition: return "failed precondition";
    case Code::kInternal: return "internal error";
    case Code::kUntrusted: return "untrusted";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code())) + ": " + message();
}

Status ErrnoError(const std::string& what, int err) {
  return IoError(what + ": " + std::strerror(err));
}

}  // namespace hotboot
