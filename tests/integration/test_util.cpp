#include "test_util.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "hotboot/http_client.h"

extern char** environ;

namespace hotboot::test {

namespace fs = std::filesystem;

std::string Bin(const std::string& name) { return std::string(HOTBOOT_BIN_DIR) + "/bin/" + name; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& out_file, const std::string& err_file) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

CmdResult RunCmd(const std::vector<std::string>& argv, int timeout_s) {
  static std::atomic<int> seq{0};
  std::string base = ScratchDir() + "/cmd." + std::to_string(seq++);
  CmdResult r;
  pid_t pid = Spawn(argv, base + ".out", base + ".err");
  if (pid < 0) {
    r.err = "spawn failed: " + argv[0];
    return r;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int st = 0;
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      break;
    }
    usleep(20 * 1000);
  }
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = ReadFile(base + ".out");
  r.err = ReadFile(base + ".err");
  return r;
}

std::string ScratchDir() {
  static std::string dir = [] {
    std::string d = fs::temp_directory_path().string() + "/hotboot-test." + std::to_string(getpid());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

const std::string& TinyModel() {
  static std::string path = [] {
    std::string p = ScratchDir() + "/tiny.safetensors";
    CmdResult r = RunCmd({Bin("hotboot-mkmodel"), "--preset", "tiny", "--out", p});
    if (r.exit_code != 0) throw std::runtime_error("hotboot-mkmodel failed: " + r.err);
    return p;
  }();
  return path;
}

const std::string& TinySnapshot() {
  static std::string path = [] {
    std::string p = ScratchDir() + "/tiny.hbsnap";
    CmdResult r = RunCmd({Bin("hotboot"), "build", "--out", p, "--model", TinyModel(), "--json"});
    if (r.exit_code != 0) throw std::runtime_error("hotboot build failed: " + r.err);
    return p;
  }();
  return path;
}

int FreePort() {
  static std::mutex mu;
  static std::set<int> given;
  std::lock_guard lock(mu);
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    int port = ntohs(a.sin_port);
    if (given.insert(port).second) return port;
  }
}

nlohmann::json Generate(int port, const std::string& prompt, int max_tokens) {
  nlohmann::json req = {{"prompt", prompt}, {"max_tokens", max_tokens}};
  auto r = HttpRequest("127.0.0.1", port, "POST", "/v1/generate", req.dump(), std::chrono::seconds(60));
  if (!r.ok() || r->status != 200) return nullptr;
  return nlohmann::json::parse(r->body, nullptr, false);
}

int HttpStatus(int port, const std::string& path) {
  auto r = HttpRequest("127.0.0.1", port, "GET", path, "", std::chrono::seconds(10));
  return r.ok() ? r->status : -1;
}

bool PidAlive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  // A zombie is not alive.
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  auto rp = stat.rfind(')');
  return !(rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] == 'Z');
}

bool WaitForText(pid_t pid, const std::string& file, const std::string& needle, int timeout_s) {
  for (int i = 0; i < timeout_s * 200; ++i) {
    if (ReadFile(file).find(needle) != std::string::npos) return true;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return false;
    usleep(5 * 1000);
  }
  return false;
}

}  // namespace hotboot::test
