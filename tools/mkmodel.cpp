// hotboot-mkmodel: writes a reference model (safetensors, seeded random
// weights at real Llama shapes) for hotboot-server.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include <CLI/CLI.hpp>

#include "hotboot/presets.h"

int main(int argc, char** argv) {
  std::string preset = "tiny", out, dtype = "bf16";
  uint64_t seed = 1234;
  int threads = 0;
  CLI::App app{"hotboot-mkmodel - write a Llama-architecture model with seeded random weights:\n"
               "tiny (~15M parameters), small (~110M), 1b (~1.1B, TinyLlama's shape),\n"
               "8b (~8.03B, Llama-3-8B's shape, ~16 GB: GPU only, hotboot-server refuses it on the CPU).\n"
               "The tensors are filled and written on all cores at once, straight to their offsets.",
               "hotboot-mkmodel"};
  app.add_option("--preset", preset, "Model size")->check(CLI::IsMember(hotboot::PresetNames()));
  app.add_option("-o,--out", out, "Output file (.safetensors)")->required();
  app.add_option("--dtype", dtype, "Weight type")->check(CLI::IsMember({"bf16", "fp16"}));
  app.add_option("--seed", seed, "Random seed (same seed, same bytes)");
  app.add_option("--threads", threads, "Threads filling and writing tensors (0: one per CPU; the bytes do not depend on it)")
      ->check(CLI::Range(0, 1024));
  CLI11_PARSE(app, argc, argv);
  auto cfg = hotboot::PresetConfig(preset);
  if (!cfg.ok()) {
    std::fprintf(stderr, "hotboot-mkmodel: error: %s\n", cfg.status().message().c_str());
    return 2;
  }
  cfg->dtype = dtype;
  const bool tty = ::isatty(2);
  int last = -1;
  const auto t0 = std::chrono::steady_clock::now();
  hotboot::Status s = hotboot::WriteModel(
      out, *cfg, seed,
      [&](uint64_t done, uint64_t total) {
        int pct = static_cast<int>(done * 100 / std::max<uint64_t>(total, 1));
        if (pct / 10 != last / 10 || (tty && pct != last)) {
          std::fprintf(stderr, tty ? "\rhotboot-mkmodel: %3d%%" : "hotboot-mkmodel: %3d%%\n", pct);
          last = pct;
        }
      },
      threads);
  if (tty) std::fprintf(stderr, "\n");
  if (!s.ok()) {
    std::fprintf(stderr, "hotboot-mkmodel: error: %s\n", s.message().c_str());
    return 1;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct stat st{};
  const double bytes = ::stat(out.c_str(), &st) == 0 ? static_cast<double>(st.st_size) : 0;
  std::printf("%s: preset %s%s, %llu parameters (%s), dim %d, %d layers, vocab %d, %.2f GB written in %.1f s (%.2f GB/s)\n",
              out.c_str(), preset.c_str(), hotboot::GpuOnly(*cfg) ? " (GPU only)" : "",
              static_cast<unsigned long long>(hotboot::ParameterCount(*cfg)), dtype.c_str(), cfg->dim, cfg->n_layers,
              cfg->vocab_size, bytes / 1e9, secs, secs > 0 ? bytes / 1e9 / secs : 0.0);
  return 0;
}
