#include <cstdio>
#include <fstream>
#include <memory>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/builder.h"
#include "hotboot/presets.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {

struct BuildArgs {
  std::string out;
  std::string model;
  std::string preset = "small";
  std::string spec_path;
  std::string server_log;
  int zstd_level = kDefaultZstdLevel;
  bool zstd_level_given = false;  // --zstd-level overrides the spec's zstd_level only when given
  std::string base;
  std::string cuda_lib;
  std::string pid_namespace;
  int ready_timeout_s = 0;
  bool json_out = false;
  std::vector<std::string> command;
  // Transparent mode from the command line (the spec's "http" object).
  int port = 0;
  std::string ready_path = "/health";
  std::string canary_path, canary_body, canary_method, canary_compare;
  std::string after_restore_path, before_capture_path;  // POST hooks
};

int RunBuild(const BuildArgs& a) {
  BuildSpec spec;
  if (!a.spec_path.empty()) {
    std::ifstream in(a.spec_path);
    if (!in) return FailJson(NotFound("cannot read build spec " + a.spec_path), a.json_out);
    json j = json::parse(in, nullptr, false);
    if (j.is_discarded()) return FailJson(InvalidArgument("build spec " + a.spec_path + " is not valid JSON"), a.json_out);
    auto s = BuildSpec::FromJson(j);
    if (!s.ok()) return FailJson(s.status(), a.json_out);
    spec = std::move(s).value();
  }
  if (a.port > 0) {
    if (a.canary_path.empty()) {
      return FailJson(InvalidArgument("--port (a server that does not speak hotboot's control protocol) needs "
                                  "--canary-path: a deterministic request whose answer restore can check"), a.json_out);
    }
    spec.mode = "transparent";
    spec.http.port = a.port;
    spec.http.ready_path = a.ready_path;
    spec.http.canary.method = !a.canary_method.empty() ? a.canary_method : a.canary_body.empty() ? "GET" : "POST";
    spec.http.canary.path = a.canary_path;
    spec.http.canary.body = a.canary_body;
    spec.http.canary_compare = a.canary_compare;
  }
  auto hook = [](const std::string& path) {
    HttpCall c;
    c.method = "POST";
    c.path = path;
    return c;
  };
  for (const auto* p : {&a.after_restore_path, &a.before_capture_path}) {
    if (!p->empty() && (*p)[0] != '/') return FailJson(InvalidArgument("hook path '" + *p + "' must start with /"), a.json_out);
  }
  if (!a.after_restore_path.empty()) spec.http.after_restore = hook(a.after_restore_path);
  if (!a.before_capture_path.empty()) spec.http.before_capture = hook(a.before_capture_path);
  if (!a.command.empty()) {
    spec.command = a.command;
  } else if (spec.transparent() && spec.command.empty()) {
    return FailJson(InvalidArgument("a transparent build needs the server's COMMAND (after --)"), a.json_out);
  } else if (spec.command.empty()) {
    auto server = FindSibling("hotboot-server");
    if (!server.ok()) return FailJson(server.status(), a.json_out);
    auto model = EnsureModel(a.model, a.preset);
    if (!model.ok()) return FailJson(model.status(), a.json_out);
    spec.command = {*server, "--model", *model, "--port", "0", "--control-stdio"};
    spec.labels["model"] = *model;
  }
  if (a.zstd_level_given) spec.zstd_level = a.zstd_level;
  if (!a.base.empty()) spec.base_snapshot = a.base;
  if (a.ready_timeout_s > 0) spec.ready_timeout = std::chrono::seconds(a.ready_timeout_s);
  if (!a.pid_namespace.empty()) spec.pid_namespace = a.pid_namespace;

  std::unique_ptr<std::ofstream> log_file;
  if (!a.server_log.empty()) log_file = std::make_unique<std::ofstream>(a.server_log, std::ios::app);
  Progress pack("packing");
  const auto t0 = std::chrono::steady_clock::now();
  BuildEvents ev;
  ev.on_phase = [&](const std::string& p) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    static const std::map<std::string, std::string> kText = {
        {"launch", "launching the server"},
        {"wait-ready", "waiting until it is warm (weights loaded, warmup done)"},
        {"warmup", "running the build spec's warmup"},
        {"canary", "recording the canary"},
        {"quiesce", "quiescing (before_capture)"},
        {"gpu-checkpoint", "moving the GPU state to host memory (CUDA checkpoint API)"},
        {"dump", "dumping the process with CRIU"},
        {"pack", "packing the snapshot"},
        {"done", "done"}};
    auto it = kText.find(p);
    char buf[32];
    std::snprintf(buf, sizeof buf, "[%6.2fs] ", s);
    if (p == "done") pack.Finish();
    const std::string text = it == kText.end() ? p : it->second;
    if (GetLogFormat() == LogFormat::kJson) {
      Log("info", text, {{"event", "phase"}, {"phase", p}, {"elapsed_s", s}});
    } else {
      Note(buf + text);
    }
  };
  ev.on_server_log = [&](const std::string& line) {
    if (log_file) {
      *log_file << line << '\n';
    } else if (!Quiet()) {
      ForwardLine("server", line);
    }
  };
  ev.on_pack_progress = [&](uint64_t d, uint64_t t) { pack.Update(d, t); };

  Status cuda_failed;
  auto cuda = CudaDriverIfPresent(a.cuda_lib, &cuda_failed);
  if (!cuda_failed.ok()) return FailJson(cuda_failed, a.json_out);
  auto criu = MakeLibCriu();
  auto r = BuildSnapshot(spec, a.out, *criu, ev, cuda.get());
  if (!r.ok()) {
    pack.Finish();
    // A build that failed is not a corrupt snapshot: exit 1, not 4.
    int rc = ExitCodeFor(r.status());
    rc = rc == kExitCorrupt ? kExitFailure : rc;
    if (a.json_out) {
      PrintFailureJson(r.status().message(), rc, {{"outcome", CodeName(r.status().code())}, {"path", a.out}});
    }
    Fail(r.status());
    Note("no snapshot was written to " + a.out);
    return rc;
  }
  const json m = ToJsonValue(r->manifest);
  for (const auto& w : r->warnings) Note("warning: " + w);
  if (a.json_out) {
    json out = {{"path", r->path},
                {"file_bytes", r->file_size},
                {"criu_images_bytes", r->images_bytes},
                {"weights_bytes", r->weights_bytes},
                {"digest", m["warm"]["digest"]},
                {"timings_ms", m["timings_ms"]},
                {"canary", m["warm"]["canary"]},
                {"warnings", r->warnings}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    const uint64_t raw = r->images_bytes + r->weights_bytes;
    std::printf("snapshot %s: %s (%.1f%% of CRIU images %s + weights %s), warm in %s, dump %s, pack %s\n",
                r->path.c_str(), HumanBytes(r->file_size).c_str(), raw ? 100.0 * r->file_size / raw : 0.0,
                HumanBytes(r->images_bytes).c_str(), HumanBytes(r->weights_bytes).c_str(),
                Ms(m["timings_ms"]["launch_to_warm"].get<double>()).c_str(),
                Ms(m["timings_ms"]["criu_dump"].get<double>()).c_str(),
                Ms(m["timings_ms"]["pack"].get<double>()).c_str());
  }
  return kExitOk;
}

}  // namespace

Runner AddBuild(CLI::App& app) {
  auto a = std::make_shared<BuildArgs>();
  app.footer(
      "Boot a server, wait until it is warm, record a canary, quiesce it, dump it with CRIU and\n"
      "pack everything into one snapshot file (written atomically: a failed or killed build\n"
      "leaves no file at --out). With no COMMAND, builds the reference server (hotboot-server)\n"
      "on --model, or on the default model of --preset, generated when missing. A COMMAND must\n"
      "speak hotboot's control protocol on stdio (server/CONTROL.md), or be described with\n"
      "--port/--canary-path (or the spec's \"http\" object) as a plain HTTP server: transparent\n"
      "mode, e.g. hotboot build -o torch.hbsnap --port 8000 --canary-path /generate\n"
      "--canary-body '{\"prompt\":\"hi\"}' --canary-compare /tokens -- python3 server.py. When the host has an\n"
      "NVIDIA driver, the GPU state of every CUDA process in the server's tree is moved to host\n"
      "memory with the driver's checkpoint API before the dump (and given back if the build fails).");
  app.add_option("-o,--out", a->out, "Snapshot file to write")->required();
  app.add_option("-m,--model", a->model, "Model file (safetensors) for the reference server");
  app.add_option("--preset", a->preset, "Default model preset when --model is not given")
      ->check(CLI::IsMember(hotboot::PresetNames()));
  app.add_option("--spec", a->spec_path, "Build spec (JSON: command, warmup, canary, timeouts, zstd_level)");
  app.add_option("--cuda-lib", a->cuda_lib,
                 "CUDA driver library for GPU capture (default: libcuda.so.1 when the host has one)");
  app.add_option("--pid-namespace", a->pid_namespace,
                 "Run the server in a PID namespace of its own (on: a restore never collides with PIDs in "
                 "use) or not (off: restore needs its PIDs free). auto (default): off on hosts with NVIDIA "
                 "devices, where CUDA fails to initialise in such a namespace, else on")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--base", a->base,
                 "Base snapshot: sections it already holds (same content) are referenced, not stored; "
                 "restore then needs the base next to the snapshot or --base");
  CLI::Option* zstd_level =
      app.add_option("--zstd-level", a->zstd_level,
                     "zstd level for the snapshot chunks (default: the spec's zstd_level, else " +
                         std::to_string(kDefaultZstdLevel) + ")")
          ->check(CLI::Range(kMinZstdLevel, kMaxZstdLevel));
  app.add_option("--ready-timeout", a->ready_timeout_s, "Seconds to wait for the server to become warm");
  app.add_option("--server-log", a->server_log, "Append the server's log here instead of stderr");
  app.add_flag("--json", a->json_out,
               "Print the result as JSON (on failure too: ok false, error, outcome, exit_code, exit)");
  AddLogFormatOption(app);
  auto* http = app.add_option_group("Any HTTP server (transparent mode)",
                                    "For a COMMAND that does not speak the control protocol (e.g. a PyTorch server)");
  http->add_option("--port", a->port, "Port the COMMAND listens on (restore keeps it)")->check(CLI::Range(1, 65535));
  http->add_option("--ready-path", a->ready_path, "GET path that answers 200 once the server is warm")
      ->capture_default_str();
  http->add_option("--canary-path", a->canary_path, "Path of a deterministic request (the canary)");
  http->add_option("--canary-body", a->canary_body, "Its body (JSON), sent with POST unless --canary-method");
  http->add_option("--canary-method", a->canary_method, "Its method (default GET, or POST with a body)");
  http->add_option("--canary-compare", a->canary_compare,
                   "JSON pointer to the part of its answer that must repeat (e.g. /tokens; default: the whole body)");
  http->add_option("--after-restore", a->after_restore_path,
                   "Path POSTed on every restored replica with its new instance id and fresh entropy (headers "
                   "Hotboot-Instance, Hotboot-Entropy; body {\"instance\",\"entropy\"}); it must reseed every RNG. "
                   "Without it, replicas share the build's random state (build warns)");
  http->add_option("--before-capture", a->before_capture_path, "Path POSTed once the server is warm, just before the capture");
  app.add_option("command", a->command, "Server command (after --)");
  return [a, zstd_level] {
    a->zstd_level_given = zstd_level->count() > 0;
    return RunBuild(*a);
  };
}

}  // namespace hotboot::cli
