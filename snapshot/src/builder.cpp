#include "hotboot/builder.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <ctime>
#include <filesystem>
#include <set>
#include <fstream>

#include "hotboot/host_info.h"
#include "hotboot/http_client.h"
#include "hotboot/node_cache.h"
#include "hotboot/snapshot_file.h"

namespace hotboot {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string NowUtc() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

const std::string kWorkPrefix = ".hotboot-build.";

bool HostHasNvidiaDevices() {
  std::error_code ec;
  return fs::exists("/dev/nvidiactl", ec);
}

bool UsePidNamespace(const std::string& choice) {
  if (choice == "auto") return !HostHasNvidiaDevices();
  return choice == "on";
}

// Every thread of every process in `tree`.
std::vector<pid_t> ThreadIds(const std::vector<pid_t>& tree) {
  std::vector<pid_t> out;
  for (pid_t p : tree) {
    std::error_code ec;
    for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(p) + "/task", ec)) {
      out.push_back(static_cast<pid_t>(std::atol(t.path().filename().c_str())));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// CRIU images are written once and packed right away: memory-backed
// /dev/shm spares the disk that round trip when it has room for them.
std::string WorkDirFor(const std::string& out_path, uint64_t expect_bytes) {
  fs::path out(out_path);
  fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  struct statvfs vfs{};
  if (::statvfs("/dev/shm", &vfs) == 0 &&
      static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize > 2 * expect_bytes + (256u << 20)) {
    dir = "/dev/shm";
  }
  return (dir / (kWorkPrefix + out.filename().string() + "." + std::to_string(::getpid()))).string();
}

// Resident memory of a process tree's root, a bound on its dump's size.
uint64_t ResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      uint64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    in.ignore(4096, '\n');
  }
  return 0;
}

// "pid N maps /dev/nvidia0" when a process of the tree holds an NVIDIA
// device; "" when none does.
std::string NvidiaDeviceUser(const std::vector<pid_t>& tree) {
  for (pid_t p : tree) {
    std::ifstream maps("/proc/" + std::to_string(p) + "/maps");
    std::string line;
    while (std::getline(maps, line)) {
      const size_t at = line.find("/dev/nvidia");
      if (at != std::string::npos) return "pid " + std::to_string(p) + " maps " + line.substr(at);
    }
  }
  return "";
}

bool PidAlive(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

// Generates once, checks the answer, and returns the parsed reply.
Result<json> Generate(const BuildSpec& spec, int port, const PromptSpec& p) {
  json req = {{"prompt", p.prompt}, {"max_tokens", p.max_tokens}};
  HB_ASSIGN_OR_RETURN(HttpResponse r,
                      HttpRequest(spec.host, port, "POST", "/v1/generate", req.dump(), spec.request_timeout));
  if (r.status != 200) {
    return FailedPrecondition("POST /v1/generate answered " + std::to_string(r.status) + ": " + r.body);
  }
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("tokens") || !j.contains("text")) {
    return Corrupt("POST /v1/generate answered a body without text/tokens: " + r.body.substr(0, 200));
  }
  j["client_latency_ms"] = r.elapsed_ms;
  return j;
}

class WorkDir {
 public:
  explicit WorkDir(std::string path) : path_(std::move(path)) {}
  ~WorkDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// What the warm phase of a build found, whichever way the server is driven.
struct Warm {
  int port = 0;
  ManifestCanary canary;       // the manifest's warm.canary
  json frozen = json::object();  // before_capture's reply (cooperative)
  double ready_ms = 0, warmup_ms = 0, quiesce_ms = 0;
};

using PhaseFn = std::function<void(const std::string&)>;

// Runs the canary `iterations` times; every answer must repeat the first.
// Fills first/warm latency and the bound a restored replica must meet.
Status RecordCanary(int iterations, const std::function<Result<std::pair<json, double>>()>& once,
                    ManifestCanary* canary) {
  std::vector<double> latencies;
  json first;
  for (int i = 0; i < iterations; ++i) {
    HB_ASSIGN_OR_RETURN(auto got, once());
    latencies.push_back(got.second);
    if (i == 0) {
      first = got.first;
    } else if (got.first != first) {
      return FailedPrecondition("the server is not deterministic: the canary gave a different answer on repeat (" +
                                first.dump().substr(0, 200) + " vs " + got.first.dump().substr(0, 200) + ")");
    }
  }
  std::vector<double> steady(latencies.begin() + 1, latencies.end());
  std::sort(steady.begin(), steady.end());
  const double warm_latency = steady[steady.size() / 2];
  canary->first_latency_ms = latencies.front();
  canary->warm_latency_ms = warm_latency;
  // The first request after a restore pays cold CPU caches and page-table
  // warmup that a warm replica does not; allow a margin, not an order.
  canary->latency_bound_ms = std::max(3.0 * warm_latency, warm_latency + 200.0);
  return Status();
}

// A server speaking the control protocol: it says when it is warm, and
// before_capture quiesces it.
Result<Warm> WarmCooperative(const BuildSpec& spec, Replica& replica, const PhaseFn& phase,
                             Clock::time_point t0) {
  Warm w;
  phase("wait-ready");
  auto warm = replica.WaitForState("warm", spec.ready_timeout);
  if (!warm.ok()) return warm.status().Prefixed("server never became ready");
  w.port = warm->value("port", 0);
  w.ready_ms = MsSince(t0);
  HB_ASSIGN_OR_RETURN(HttpResponse rz, HttpRequest(spec.host, w.port, "GET", "/readyz", "", spec.request_timeout));
  if (rz.status != 200) {
    return FailedPrecondition("server reported warm but GET /readyz answered " + std::to_string(rz.status));
  }

  phase("warmup");
  const auto tw = Clock::now();
  for (const auto& p : spec.warmup) {
    for (int i = 0; i < p.iterations; ++i) {
      auto r = Generate(spec, w.port, p);
      if (!r.ok()) return r.status().Prefixed("warmup request");
    }
  }
  w.warmup_ms = MsSince(tw);

  phase("canary");
  json answer;
  HB_RETURN_IF_ERROR(RecordCanary(spec.canary.iterations, [&]() -> Result<std::pair<json, double>> {
    auto r = Generate(spec, w.port, spec.canary);
    if (!r.ok()) return r.status().Prefixed("canary request");
    answer = *r;
    return std::make_pair((*r)["tokens"], (*r)["client_latency_ms"].get<double>());
  }, &w.canary));
  w.canary.prompt = spec.canary.prompt;
  w.canary.max_tokens = spec.canary.max_tokens;
  for (const auto& t : answer["tokens"]) {
    if (!t.is_number_integer()) return Corrupt("the canary's answer has a token that is not an integer: " + t.dump());
    w.canary.tokens.push_back(t.get<int64_t>());
  }
  if (answer["text"].is_string()) w.canary.text = answer["text"].get<std::string>();

  phase("quiesce");
  const auto tq = Clock::now();
  HB_ASSIGN_OR_RETURN(w.frozen, replica.Call({{"cmd", "before_capture"}}, spec.request_timeout));
  w.quiesce_ms = MsSince(tq);
  return w;
}

// Any HTTP server: ready when its probe answers 200; warmup, canary and the
// optional before_capture hook are plain requests from the spec.
Result<Warm> WarmTransparent(const BuildSpec& spec, Replica& replica, const PhaseFn& phase,
                             Clock::time_point t0) {
  const TransparentSpec& t = spec.http;
  Warm w;
  w.port = t.port;
  phase("wait-ready");
  auto gone = [&]() -> std::string {
    if (!replica.Exited()) return "";
    return "it exited; its last words:\n" + replica.FinalLogTail();
  };
  HB_RETURN_IF_ERROR(WaitHttpReady(spec.host, t.port, t.ready_path, spec.ready_timeout, gone)
                         .Prefixed("server never became ready"));
  w.ready_ms = MsSince(t0);

  phase("warmup");
  const auto tw = Clock::now();
  for (const auto& call : t.warmup) {
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(spec.host, t.port, call, spec.request_timeout));
    if (r.status / 100 != 2) {
      return FailedPrecondition("warmup " + call.method + " " + call.path + " answered " + std::to_string(r.status));
    }
  }
  w.warmup_ms = MsSince(tw);

  phase("canary");
  json expected;
  HB_RETURN_IF_ERROR(RecordCanary(spec.canary.iterations, [&]() -> Result<std::pair<json, double>> {
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(spec.host, t.port, t.canary, spec.request_timeout));
    if (r.status / 100 != 2) {
      return FailedPrecondition("canary " + t.canary.path + " answered " + std::to_string(r.status) + ": " +
                                r.body.substr(0, 200));
    }
    HB_ASSIGN_OR_RETURN(json v, CanaryValue(r.body, t.canary_compare));
    expected = v;
    return std::make_pair(v, r.elapsed_ms);
  }, &w.canary));
  w.canary.request = ManifestHttpCall{t.canary.method, t.canary.path, t.canary.body};
  w.canary.compare = t.canary_compare;
  w.canary.expected = expected;

  phase("quiesce");
  const auto tq = Clock::now();
  if (t.before_capture) {
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(spec.host, t.port, *t.before_capture, spec.request_timeout));
    if (r.status / 100 != 2) {
      return FailedPrecondition("before_capture hook " + t.before_capture->path + " answered " +
                                std::to_string(r.status) + ": " + r.body.substr(0, 200));
    }
  }
  w.quiesce_ms = MsSince(tq);
  return w;
}

// A string member of a server's reply, or "" (a reply is not trusted to
// have the types it should).
std::string StringOr(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// The files the server maps, into the manifest: registered weights files
// (`provided`) become weights/ sections, provided by the snapshot; every
// other file must exist on the restoring host with the same content, so its
// XXH3-128 is recorded. A registered file must be in this host's weights
// directory and carry its content-hash name: the snapshot records that name
// and the directory, never a path, and restore finds it only there.
Status RecordFiles(const std::vector<MappedFile>& files, const std::set<std::string>& provided, ManifestProcess* p,
                   std::vector<snapfile::SectionSource>* sections) {
  std::string dir;
  if (!provided.empty()) {
    HB_ASSIGN_OR_RETURN(SafeDir d, SafeDir::Open(ResolveWeightsDir(), /*create=*/false));
    dir = d.path();
  }
  for (const auto& f : files) {
    if (!provided.count(f.path)) {
      HB_ASSIGN_OR_RETURN(std::string hash, HashPathXxh128(f.path));
      p->mapped_files.push_back({f.path, f.size, std::move(hash)});
      continue;
    }
    const fs::path path(f.path);
    ProvidedFile pf;
    pf.name = path.filename().string();
    if (path.parent_path().string() != dir) {
      return FailedPrecondition("the server registered " + f.path + " as a weights file, but it is not in this " +
                                "host's weights directory " + dir + " (HOTBOOT_WEIGHTS_DIR): restore would not " +
                                "find it there");
    }
    if (!ParseContentName(pf.name, &pf.content_hash)) {
      return FailedPrecondition("the server registered " + f.path + " as a weights file, but its name is not its " +
                                "content hash (weights-<XXH3-128 hex>.bin)");
    }
    pf.size = f.size;
    pf.section = "weights/" + pf.name;
    p->provided_files.push_back(pf);
    snapfile::SectionSource src;
    src.name = pf.section;
    src.file_path = f.path;
    src.elem = snapfile::ElemType::kBf16;  // packed bf16 panels (kernels/ arena)
    // CRIU's restore checks a mapped file's mode against the dump's: the
    // copy restore extracts gets the mode recorded here.
    struct stat st{};
    if (::stat(f.path.c_str(), &st) != 0) return ErrnoError("stat " + f.path, errno);
    src.mode = st.st_mode & 07777;
    sections->push_back(std::move(src));
  }
  p->weights_dir = dir;
  return Status::Ok();
}

// Each weights section's content hash (computed by the writer as it packed
// the file) must be the one its name claims; else the snapshot is removed.
Status CheckProvidedSections(const std::string& out_path, const ManifestProcess& p) {
  if (p.provided_files.empty()) return Status::Ok();
  Status s;
  auto reader = snapfile::SnapshotReader::Open(out_path);
  if (!reader.ok()) {
    s = reader.status();
  } else {
    for (const auto& f : p.provided_files) {
      const snapfile::SectionInfo* sec = (*reader)->FindSection(f.section);
      if (!sec || sec->content_hash.Hex() != f.content_hash || sec->raw_size != f.size) {
        s = FailedPrecondition("the weights file " + f.name + " does not hold what its name says (its bytes hash to " +
                               (sec ? sec->content_hash.Hex() : std::string("?")) + "); it changed while the " +
                               "build packed it, or its server names it wrongly");
        break;
      }
    }
  }
  if (!s.ok()) ::unlink(out_path.c_str());
  return s;
}

}  // namespace

Result<BuildSpec> BuildSpec::FromJson(const json& j) {
  BuildSpec s;
  if (!j.is_object()) return InvalidArgument("build spec must be a JSON object");
  try {
    if (j.contains("command")) s.command = j.at("command").get<std::vector<std::string>>();
    s.host = j.value("host", s.host);
    if (j.contains("ready_timeout_s")) s.ready_timeout = std::chrono::seconds(j.at("ready_timeout_s").get<int>());
    if (j.contains("request_timeout_s")) s.request_timeout = std::chrono::seconds(j.at("request_timeout_s").get<int>());
    auto prompt = [](const json& p) {
      PromptSpec ps;
      ps.prompt = p.at("prompt").get<std::string>();
      ps.max_tokens = p.value("max_tokens", 16);
      ps.iterations = p.value("iterations", 1);
      return ps;
    };
    if (j.contains("warmup")) {
      for (const auto& p : j.at("warmup")) s.warmup.push_back(prompt(p));
    }
    if (j.contains("canary")) s.canary = prompt(j.at("canary"));
    s.zstd_level = j.value("zstd_level", s.zstd_level);
    s.base_snapshot = j.value("base_snapshot", s.base_snapshot);
    s.mode = j.value("mode", s.mode);
    s.cwd = j.value("cwd", s.cwd);
    if (j.contains("http")) {
      const json& h = j.at("http");
      s.http.port = h.at("port").get<int>();
      s.http.ready_path = h.value("ready_path", s.http.ready_path);
      s.http.canary_compare = h.value("canary_compare", "");
      auto call = [](const json& c, const std::string& what) -> HttpCall {
        auto r = HttpCall::FromJson(c);
        if (!r.ok()) throw std::invalid_argument(what + ": " + r.status().message());
        return *r;
      };
      s.http.canary = call(h.at("canary"), "http.canary");
      if (h.contains("warmup")) {
        for (const auto& c : h.at("warmup")) s.http.warmup.push_back(call(c, "http.warmup"));
      }
      if (h.contains("before_capture")) s.http.before_capture = call(h["before_capture"], "http.before_capture");
      if (h.contains("after_restore")) s.http.after_restore = call(h["after_restore"], "http.after_restore");
      if (!j.contains("mode")) s.mode = "transparent";
    }
    if (j.contains("gpu_lock_timeout_s")) {
      s.gpu_lock_timeout = std::chrono::seconds(j.at("gpu_lock_timeout_s").get<int>());
    }
    s.pid_namespace = j.value("pid_namespace", s.pid_namespace);
    if (j.contains("labels")) s.labels = j.at("labels");
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("build spec: ") + e.what());
  } catch (const std::invalid_argument& e) {
    return InvalidArgument(std::string("build spec: ") + e.what());
  }
  if (s.mode != "cooperative" && s.mode != "transparent") {
    return InvalidArgument("build spec: mode must be \"cooperative\" or \"transparent\", not \"" + s.mode + "\"");
  }
  if (s.zstd_level < kMinZstdLevel || s.zstd_level > kMaxZstdLevel) {
    return InvalidArgument("build spec: zstd_level must be " + std::to_string(kMinZstdLevel) + ".." +
                           std::to_string(kMaxZstdLevel) + ", not " + std::to_string(s.zstd_level));
  }
  if (s.pid_namespace != "auto" && s.pid_namespace != "on" && s.pid_namespace != "off") {
    return InvalidArgument("build spec: pid_namespace must be \"auto\", \"on\" or \"off\", not \"" +
                           s.pid_namespace + "\"");
  }
  if (s.transparent()) {
    if (s.http.port < 1 || s.http.port > 65535) {
      return InvalidArgument("build spec: a transparent server needs http.port, the port it listens on");
    }
    if (s.http.canary.path.empty() || s.http.canary.path == "/") {
      return InvalidArgument("build spec: a transparent server needs http.canary, a deterministic request");
    }
  }
  if (s.canary.max_tokens < 1 || s.canary.iterations < 2) {
    return InvalidArgument("build spec: canary needs max_tokens >= 1 and iterations >= 2");
  }
  return s;
}

std::vector<std::string> BuildSpec::Warnings() const {
  std::vector<std::string> out;
  if (transparent() && !http.after_restore) {
    out.push_back(
        "this transparent snapshot has no after_restore hook: every replica restored from it resumes "
        "with the build's random state (Python's random, NumPy, torch generators), boot id and "
        "anything else the server drew at start, so replicas that sample would draw the same "
        "\"random\" values and hand out the same ids. Give the server an endpoint that reseeds "
        "from the entropy restore sends (headers Hotboot-Instance and Hotboot-Entropy) and name it "
        "with --after-restore PATH or the spec's http.after_restore (tools/examples/"
        "http_model_server.py has one).");
  }
  return out;
}

void RemoveStaleBuildFiles(const std::string& out_path) {
  fs::path out(out_path);
  fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  std::vector<fs::directory_entry> entries;
  for (const auto& e : fs::directory_iterator(dir, ec)) entries.push_back(e);
  for (const auto& e : fs::directory_iterator("/dev/shm", ec)) {
    if (e.path().filename().string().rfind(kWorkPrefix, 0) == 0) entries.push_back(e);
  }
  for (const auto& e : entries) {
    std::string name = e.path().filename().string();
    std::string base = out.filename().string();
    std::string pid_part;
    if (name.rfind(kWorkPrefix + base + ".", 0) == 0) {
      pid_part = name.substr(kWorkPrefix.size() + base.size() + 1);
    } else if (name.rfind(base + ".tmp.", 0) == 0) {
      pid_part = name.substr(base.size() + 5);
    } else {
      continue;
    }
    char* end = nullptr;
    long pid = std::strtol(pid_part.c_str(), &end, 10);
    if (end == pid_part.c_str() || *end != '\0' || PidAlive(static_cast<pid_t>(pid))) continue;
    fs::remove_all(e.path(), ec);
  }
}

Result<BuildResult> BuildSnapshot(const BuildSpec& spec, const std::string& out_path, Criu& criu,
                                  const BuildEvents& ev, CudaDriver* cuda) {
  auto phase = [&](const std::string& p) {
    if (ev.on_phase) ev.on_phase(p);
  };
  if (spec.command.empty()) return InvalidArgument("no server command to build a snapshot of");
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(std::string criu_version, criu.Version());

  RemoveStaleBuildFiles(out_path);
  // This build's job (host/job.h): the server's cgroup and every temporary
  // are ended/removed by a janitor if this process dies, whatever kills it;
  // starting it sweeps what dead builds and restores left.
  HB_ASSIGN_OR_RETURN(std::shared_ptr<host::Job> job, host::Job::Start({.kind = "build"}));
  if (!job->contained()) phase("warning: " + job->warning());

  phase("launch");
  LaunchOptions lo;
  lo.job = job;
  lo.argv = spec.command;
  lo.stdout_to_log = spec.transparent();
  lo.cwd = !spec.cwd.empty() ? spec.cwd : spec.transparent() ? fs::current_path().string() : "/";
  lo.new_pid_namespace = UsePidNamespace(spec.pid_namespace);
  HB_ASSIGN_OR_RETURN(auto replica, LaunchReplica(lo, ev.on_server_log));
  HB_ASSIGN_OR_RETURN(Warm w, spec.transparent() ? WarmTransparent(spec, *replica, phase, t0)
                                                 : WarmCooperative(spec, *replica, phase, t0));
  const int port = w.port;
  const json& frozen = w.frozen;

  // GPU state goes to host memory before anything about the process is
  // recorded: the checkpoint closes its device files and mappings.
  const std::vector<pid_t> tree = ProcessTree(replica->pid());
  GpuCheckpoint gpu;
  if (cuda) {
    phase("gpu-checkpoint");
    HB_ASSIGN_OR_RETURN(gpu, GpuCheckpoint::Take(*cuda, tree, spec.gpu_lock_timeout));
  } else if (std::string dev = NvidiaDeviceUser(tree); !dev.empty()) {
    return FailedPrecondition(dev + ", but no NVIDIA driver is usable by hotboot here, so its GPU state "
                              "cannot be captured");
  }
  // Until CRIU has the tree, a failure gives the processes their GPUs back.
  struct GpuGuard {
    GpuCheckpoint* g;
    bool armed = true;
    ~GpuGuard() {
      if (armed) g->Rollback();
    }
  } gpu_guard{&gpu};

  HB_ASSIGN_OR_RETURN(std::vector<std::string> keys, replica->FdKeys());
  // Without a PID namespace of its own the tree comes back with these PIDs
  // (threads included); restore checks that they are free.
  const std::vector<pid_t> tids = lo.new_pid_namespace ? std::vector<pid_t>{} : ThreadIds(tree);
  HB_ASSIGN_OR_RETURN(std::vector<MappedFile> files, MappedFiles(replica->pid()));
  WorkDir work(WorkDirFor(out_path, ResidentBytes(replica->pid())));
  HB_RETURN_IF_ERROR(job->AddTemporary(work.path()));  // before it exists
  std::error_code ec;
  fs::create_directories(fs::path(work.path()) / "images", ec);
  if (ec) return IoError("create work dir " + work.path() + ": " + ec.message());
  const std::string images = work.path() + "/images";

  phase("dump");
  const auto td = Clock::now();
  CriuDumpOptions dopt;
  dopt.pid = replica->pid();
  dopt.images_dir = images;
  if (replica->cgroup()) dopt.cgroup = replica->cgroup()->path();
  for (const auto& k : keys) {
    if (k.rfind("pipe:", 0) == 0) dopt.externals.push_back(k);
  }
  Status dumped = criu.Dump(dopt);
  if (!dumped.ok()) return dumped.Prefixed("CRIU dump");
  gpu_guard.armed = false;  // the dumped tree is gone; its GPU state is in the images
  replica->Wait();  // CRIU ends the dumped tree
  const double dump_ms = MsSince(td);

  HostInfo host = ReadHostInfo();
  // Large immutable regions the server registered (its weights file) travel
  // as their own sections; the rest of the mapped files must exist on the
  // restoring host.
  std::set<std::string> provided;
  if (frozen.contains("weights_files") && frozen["weights_files"].is_array()) {
    for (const auto& w : frozen["weights_files"]) {
      if (w.is_string()) provided.insert(w.get<std::string>());
    }
  }
  // A registered weights file the server does not keep mapped (the GPU
  // model: its bytes live on the device, and restore may hand them over
  // without writing the file) travels all the same.
  for (const auto& path : provided) {
    if (std::any_of(files.begin(), files.end(), [&](const MappedFile& f) { return f.path == path; })) continue;
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return ErrnoError("the server registered the weights file " + path, errno);
    if (!S_ISREG(st.st_mode)) {
      return FailedPrecondition("the server registered " + path + " as a weights file, but it is not a regular file");
    }
    files.push_back({path, static_cast<uint64_t>(st.st_size)});
  }
  Manifest m;
  std::vector<snapfile::SectionSource> extra_sections;
  HB_RETURN_IF_ERROR(RecordFiles(files, provided, &m.process, &extra_sections));
  uint64_t images_bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(images, ec)) {
    if (e.is_regular_file()) images_bytes += e.file_size();
  }

  m.tool_version = HOTBOOT_VERSION;
  m.created_at = NowUtc();
  m.mode = spec.mode;
  m.host = ManifestHost{host.hostname, host.kernel, host.arch, host.cpu_model, host.cpus, {}};
  for (const auto& f : IsaFlags(host.cpu_flags)) m.host.isa_flags.push_back(f);
  m.criu = ManifestCriu{criu_version, images_bytes, dopt.log_level};
  m.process.command = spec.command;
  m.process.cwd = lo.cwd;
  m.process.pid_namespace = lo.new_pid_namespace;
  m.process.pids.assign(tids.begin(), tids.end());
  m.process.fd_keys = keys;
  m.server = ManifestServer{spec.host, port, StringOr(frozen, "instance")};
  m.warm.digest = StringOr(frozen, "digest");
  m.warm.canary = w.canary;
  m.timings_ms = {{"launch_to_warm", w.ready_ms},
                  {"builder_warmup", w.warmup_ms},
                  {"quiesce", w.quiesce_ms},
                  {"criu_dump", dump_ms}};
  m.labels = spec.labels;
  if (spec.transparent()) {
    m.http = ManifestHttp{spec.http.port, spec.http.ready_path, std::nullopt};
    if (const auto& h = spec.http.after_restore) m.http->after_restore = ManifestHttpCall{h->method, h->path, h->body};
  }
  if (!gpu.empty()) {
    const GpuCaptureInfo& g = gpu.info();
    m.gpu.emplace();
    m.gpu->driver_version = g.driver_version;
    m.gpu->cuda_version = g.cuda_version;
    m.gpu->processes = g.processes;
    for (size_t i = 0; i < g.devices.size(); ++i) {
      const GpuDevice& d = g.devices[i];
      m.gpu->devices.push_back({d.ordinal, d.uuid, d.name, d.cc_major, d.cc_minor, d.total_bytes,
                                i < g.used_bytes.size() ? g.used_bytes[i] : 0});
    }
    m.gpu->lock_ms = g.lock_ms;
    m.gpu->checkpoint_ms = g.checkpoint_ms;
    m.SetTiming("gpu_lock", g.lock_ms);
    m.SetTiming("gpu_checkpoint", g.checkpoint_ms);
  }

  phase("pack");
  const auto tp = Clock::now();
  HB_ASSIGN_OR_RETURN(auto sections, snapfile::SectionsFromDirectory(images, "criu"));
  for (auto& e : extra_sections) sections.push_back(std::move(e));
  // Sections carry the pack timing only via the manifest's own field below;
  // the pack time is known after writing and is reported in BuildResult.
  snapfile::WriteOptions wo;
  wo.zstd_level = spec.zstd_level;
  wo.base_path = spec.base_snapshot;
  m.SetTiming("total_before_pack", MsSince(t0));
  // What restore will read, checked before anything is written: a value
  // out of the manifest's bounds (a huge canary answer, labels) fails the
  // build here, not every restore later.
  const std::string manifest_json = ToJson(m);
  if (auto back = ParseManifest(manifest_json); !back.ok()) {
    return back.status().Prefixed("the manifest this build would write does not read back");
  }
  // The writer's temporary (out_path.tmp.PID, renamed into place at the end).
  const std::string snapshot_tmp = out_path + ".tmp." + std::to_string(::getpid());
  HB_RETURN_IF_ERROR(job->AddTemporary(snapshot_tmp));
  HB_RETURN_IF_ERROR(snapfile::WriteSnapshot(out_path, manifest_json, sections, wo, ev.on_pack_progress));
  job->DropTemporary(snapshot_tmp);
  HB_RETURN_IF_ERROR(CheckProvidedSections(out_path, m.process));
  m.SetTiming("pack", MsSince(tp));

  BuildResult res;
  res.path = out_path;
  res.manifest = m;
  res.images_bytes = images_bytes;
  res.warnings = spec.Warnings();
  for (const auto& f : m.process.provided_files) res.weights_bytes += f.size;
  struct stat st{};
  if (::stat(out_path.c_str(), &st) == 0) res.file_size = static_cast<uint64_t>(st.st_size);
  phase("done");
  return res;
}

}  // namespace hotboot
