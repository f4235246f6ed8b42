#include <criu/criu.h>
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <deque>

#include "hotboot/criu.h"
#include "hotboot/replica.h"

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
    std::string wrapper;
    if (!o.cgroup.empty()) {
      const size_t slash = o.images_dir.rfind('/');
      const std::string beside = slash == std::string::npos ? "." : o.images_dir.substr(0, slash);
      HB_ASSIGN_OR_RETURN(wrapper, WriteCgroupWrapper(beside, o.cgroup));
    }
    HB_RETURN_IF_ERROR(Init());
    if (!wrapper.empty() && criu_set_service_binary(wrapper.c_str()) < 0) {
      criu_free_opts();
      RemoveWrapper(wrapper);
      return Internal("criu_set_service_binary failed");
    }
    criu_set_pid(o.pid);
    criu_set_images_dir_fd(dir.get());
    criu_set_log_file(o.log_file.c_str());
    criu_set_log_level(LogLevel(o.log_level));
    criu_set_leave_running(o.leave_running);
    if (o.timeout_s) criu_set_timeout(o.timeout_s);
    for (const auto& e : o.externals) criu_add_external(e.c_str());
    int rc = criu_dump();
    criu_free_opts();
    RemoveWrapper(wrapper);
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
    std::string wrapper;
    if (!o.cgroup.empty()) {
      HB_ASSIGN_OR_RETURN(wrapper, WriteCgroupWrapper(work, o.cgroup));
    }
    HB_RETURN_IF_ERROR(Init());
    if (!wrapper.empty() && criu_set_service_binary(wrapper.c_str()) < 0) {
      criu_free_opts();
      RemoveWrapper(wrapper);
      return Internal("criu_set_service_binary failed");
    }
    // The tree stays in the cgroup CRIU runs in (see CriuRestoreOptions::cgroup).
    criu_set_manage_cgroups_mode(CRIU_CG_MODE_IGNORE);
    criu_set_images_dir_fd(dir.get());
    criu_set_work_dir_fd(wdir.get());
    criu_set_log_file(o.log_file.c_str());
    criu_set_log_level(LogLevel(o.log_level));
    for (const auto& [fd, key] : o.inherit_fds) criu_add_inherit_fd(fd, key.c_str());
    int pid = criu_restore_child();
    criu_free_opts();
    RemoveWrapper(wrapper);
    if (pid <= 0) {
      return Internal("criu_restore failed (" + ErrName(pid) + "); CRIU log " + work + "/" +
                      o.log_file + ":\n" + CriuLogTail(work + "/" + o.log_file));
    }
    return static_cast<pid_t>(pid);
  }

 private:
  // libcriu execs its service binary itself (fork + exec "BINARY swrk FD"),
  // with no hook between the two: a two-line shell script in the restore's
  // private work dir is that binary, enters the cgroup and execs criu.
  Result<std::string> WriteCgroupWrapper(const std::string& work_dir, const std::string& cgroup) {
    HB_ASSIGN_OR_RETURN(std::string criu, ResolveExecutable(binary_.empty() ? "criu" : binary_));
    auto quote = [](const std::string& v) {
      std::string q = "'";
      for (char c : v) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      return q + "'";
    };
    // The work dir is ours (made by this process, writable by root only); where it is mounted
    // noexec (/dev/shm on some hosts), a private dir in /var/tmp instead.
    std::string dir = work_dir;
    struct statvfs vfs{};
    if (::statvfs(work_dir.c_str(), &vfs) == 0 && (vfs.f_flag & ST_NOEXEC)) {
      char tmpl[] = "/var/tmp/hotboot-criu.XXXXXX";
      if (!::mkdtemp(tmpl)) return ErrnoError("mkdtemp /var/tmp/hotboot-criu.XXXXXX", errno);
      dir = tmpl;
    }
    const std::string path = dir + "/criu-in-cgroup";
    const std::string text = "#!/bin/sh\necho $$ > " + quote(cgroup + "/cgroup.procs") + " || exit 70\nexec " +
                             quote(criu) + " \"$@\"\n";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0700);
    if (fd < 0) return ErrnoError("create " + path, errno);
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!ok) return IoError("write " + path);
    return path;
  }

  static void RemoveWrapper(const std::string& wrapper) {
    if (wrapper.empty()) return;
    ::unlink(wrapper.c_str());
    if (wrapper.rfind("/var/tmp/hotboot-criu.", 0) == 0) ::rmdir(wrapper.substr(0, wrapper.rfind('/')).c_str());
  }

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
