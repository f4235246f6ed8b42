#include <criu/criu.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <deque>

#include "hotboot/criu.h"

namespace hotboot {
namespace {

// libcriu keeps its options in a global; serialize every use of it.
std::mutex g_criu_mu;

class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() { if (fd_ >= 0) ::close(fd_); }
  int get() const { return fd_; }
 private:
  int fd_;
};

class LibCriu final : public Criu {
 public:
  explicit LibCriu(std::string binary) : binary_(std::move(binary)) {}

  Result<std::string> Version() override {
    std::lock_guard lock(g_criu_mu);
    if (Status s = Init(); !s.ok()) return s;
    int v = criu_get_version();
    criu_free_opts();
    if (v <= 0) {
      return NotFound("cannot run CRIU ('criu swrk' failed); run tools/install-deps to install CRIU >= 4");
    }
    // CRIU encodes major*10000 + minor*100 + sublevel.
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
           std::to_string(v % 100);
  }

  Status Dump(const CriuDumpOptions& o) override {
    std::lock_guard lock(g_criu_mu);
    FdGuard dir(::open(o.images_dir.c_str(), O_DIRECTORY | O_CLOEXEC));
    if (dir.get() < 0) return ErrnoError("open CRIU images dir " + o.images_dir, errno);
    HB_RETURN_IF_ERROR(Init());
    criu_set_pid(o.pid);
    criu_set_images_dir_fd(dir.get());
    criu_set_log_file(o.log_file.c_str());
    criu_set_log_level(LogLevel(o.log_level));
    criu_set_leave_running(o.leave_running);
    if (o.timeout_s) criu_set_timeout(o.timeout_s);
    for (const auto& e : o.externals) criu_add_external(e.c_str());
    int rc = criu_dump();
    criu_free_opts();
    if (rc < 0) {
      return Internal("criu_dump of pid " + std::to_string(o.pid) + " failed (" + ErrName(rc) +
                      "); CRIU log " + o.images_dir + "/" + o.log_file + ":\n" +
                      CriuLogTail(o.images_dir + "/" + o.log_file));
    }
    return Status::Ok();
  }

  Result<pid_t> Restore(const CriuRestoreOptions& o) override {
    std::lock_guard lock(g_criu_mu);
    FdGuard dir(::open(o.images_dir.c_str(), O_DIRECTORY | O_CLOEXEC));
    if (dir.get() < 0) return ErrnoError("open CRIU images dir " + o.images_dir, errno);
    std::string work = o.work_dir.empty() ? o.images_dir : o.work_dir;
    FdGuard wdir(::open(work.c_str(), O_DIRECTORY | O_CLOEXEC));
    if (wdir.get() < 0) return ErrnoError("open CRIU work dir " + work, errno);
    HB_RETURN_IF_ERROR(Init());
    criu_set_images_dir_fd(dir.get());
    criu_set_work_dir_fd(wdir.get());
    criu_set_log_file(o.log_file.c_str());
    criu_set_log_level(LogLevel(o.log_level));
    for (const auto& [fd, key] : o.inherit_fds) criu_add_inherit_fd(fd, key.c_str());
    int pid = criu_restore_child();
    criu_free_opts();
    if (pid <= 0) {
      return Internal("criu_restore failed (" + ErrName(pid) + "); CRIU log " + work + "/" +
                      o.log_file + ":\n" + CriuLogTail(work + "/" + o.log_file));
    }
    return static_cast<pid_t>(pid);
  }

 private:
  Status Init() {
    if (criu_init_opts() < 0) return Internal("criu_init_opts failed");
    // HOTBOOT_CRIU_LOG_LEVEL=4 makes CRIU's own logs verbose, for debugging.
    if (!binary_.empty() && criu_set_service_binary(binary_.c_str()) < 0) {
      criu_free_opts();
      return Internal("criu_set_service_binary failed");
    }
    return Status::Ok();
  }

  static int LogLevel(int level) {
    const char* env = std::getenv("HOTBOOT_CRIU_LOG_LEVEL");
    return env && *env ? std::atoi(env) : level;
  }

  static std::string ErrName(int rc) {
    switch (rc) {
      case -EBADE: return "RPC error";
      case -ECONNREFUSED: return "cannot connect to CRIU";
      case -ECOMM: return "CRIU RPC communication failed";
      case -EINVAL: return "CRIU rejected the options";
      case -EBADMSG: return "CRIU sent an unexpected reply";
      default: return "code " + std::to_string(rc);
    }
  }

  std::string binary_;
};

}  // namespace

std::unique_ptr<Criu> MakeLibCriu(std::string criu_binary) {
  return std::make_unique<LibCriu>(std::move(criu_binary));
}

std::string CriuLogTail(const std::string& log_path, size_t max_lines) {
  std::ifstream in(log_path);
  if (!in) return "  (no log at " + log_path + ")";
  std::deque<std::string> errors, last;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("Error") != std::string::npos || line.find("error") != std::string::npos) {
      errors.push_back(line);
      if (errors.size() > max_lines) errors.pop_front();
    }
    last.push_back(line);
    if (last.size() > max_lines) last.pop_front();
  }
  const auto& pick = errors.empty() ? last : errors;
  std::string out;
  for (const auto& l : pick) out += "  " + l + "\n";
  return out;
}

}  // namespace hotboot
