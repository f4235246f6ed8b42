// hotboot-server: the reference inference server, runnable alone.
#include <signal.h>
#include <sys/time.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <CLI/CLI.hpp>

#include "hotboot/replica_server.h"

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  hotboot::ServerOptions o;
  bool control = false;
  CLI::App app{"hotboot-server " HOTBOOT_VERSION
               " - the reference inference server: a Llama-architecture transformer on a CUDA GPU or the CPU\n"
               "behind HTTP. GET /livez (liveness), GET /readyz (200 only when warm), POST /v1/generate\n"
               "{\"prompt\": \"...\", \"max_tokens\": N}, GET /metrics (Prometheus text with boot phases).",
               "hotboot-server"};
  app.add_option("-m,--model", o.model_path, "Model file (safetensors, from hotboot-mkmodel)")->required();
  app.add_option("-p,--port", o.port, "Port to listen on (0: any free port)")->check(CLI::Range(0, 65535));
  app.add_option("--host", o.host, "Address to listen on");
  app.add_option("--threads", o.threads, "Compute threads (0: all cores)");
  app.add_option("--device", o.device, "auto: a CUDA GPU when usable, else the CPU; cpu; cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--max-batch", o.max_batch, "Requests decoded together")->check(CLI::Range(1, 8));
  app.add_option("--keep-warm-interval", o.keep_warm_interval_s,
                 "Keep-warm: after this many seconds without a request, send ourselves one synthetic request of a "
                 "warmup shape (in turn), so caches and a GPU's clocks stay warm; counted in /metrics "
                 "(hotboot_keep_warm_requests_total), not as a request. Paused while captured; a snapshot built with "
                 "it restores with it. 0: off")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_flag("--control-stdio", control,
               "Take hotboot's control commands as JSON lines on stdin, answer on stdout (server/CONTROL.md)");
  app.footer(
      "GPU-only models: one over 4e9 parameters (hotboot-mkmodel --preset 8b, Llama-3-8B's shape,\n"
      "~16 GB) is served on a CUDA GPU only: with --device cpu, or auto on a host without a usable\n"
      "GPU, the server refuses it from its header, before reading any weight, and exits 3.\n"
      "Exit codes: 0 stopped, 1 the model failed to load or warm up, 2 the port could not be bound,\n"
      "3 the model cannot be served on this host's device.\n"
      "\n"
      "Environment:\n"
      "  HOTBOOT_WEIGHTS_DIR  Where the packed weights go: a file mapped shared, so that a snapshot\n"
      "                       stores it once and restored replicas map it. Default:\n"
      "                       /dev/shm/hotboot-weights. \"none\": the CPU model keeps its weights in\n"
      "                       anonymous memory (the GPU model still writes its file, in the default\n"
      "                       directory). The directory needs room for about the model file's size:\n"
      "                       loading checks and reserves it first, and fails saying how much is\n"
      "                       needed and free. A container's default /dev/shm is 64 MiB: give the\n"
      "                       container more (podman/docker run --shm-size=4g) or set\n"
      "                       HOTBOOT_WEIGHTS_DIR to a directory with room.");
  CLI11_PARSE(app, argc, argv);
  if (control) {
    o.control_in_fd = 0;
    o.control_out_fd = 1;
  }
  // One line per message on stderr, with a UTC timestamp.
  static std::mutex log_mu;
  hotboot::Logger log = [](const std::string& line) {
    timeval tv{};
    ::gettimeofday(&tv, nullptr);
    std::tm tm{};
    ::gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    std::lock_guard lock(log_mu);
    std::fprintf(stderr, "%s.%03ldZ hotboot-server[%d]: %s\n", ts, static_cast<long>(tv.tv_usec / 1000), ::getpid(),
                 line.c_str());
  };
  hotboot::ReplicaServer server(o, log);
  return server.Run();
}
