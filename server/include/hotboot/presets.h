// Model presets at real Llama shapes and the generator behind hotboot-mkmodel:
// seeded random-normal weights (bf16 or fp16) in a safetensors file, plus a
// byte-level BPE merge table.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "hotboot/model.h"
#include "hotboot/status.h"

namespace hotboot {

// "tiny" (~15M parameters), "small" (~110M), "1b" (~1.1B, TinyLlama's
// shape), "8b" (~8.03B, Llama-3-8B's shape, GPU only).
Result<ModelConfig> PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();
// The presets the CPU model serves (all but the GPU-only ones).
std::vector<std::string> CpuPresetNames();
// Parameters a config has (embeddings, layers, final norm, untied head).
uint64_t ParameterCount(const ModelConfig& c);

// Above this the model is GPU only: the CPU model packs its weights as
// bf16 panels plus fp32 activations and would need over 16 GB of RAM and
// seconds per token at 8B; it refuses such a model from its config alone,
// before reading any tensor.
inline constexpr uint64_t kCpuMaxParameters = 4'000'000'000;
bool GpuOnly(const ModelConfig& c);

using WriteProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;
// Writes the model atomically, its tensors filled and written on `threads`
// threads at once (<= 0: one per CPU), in chunks (memory: threads x 8 MiB);
// the same config and seed give the same bytes whatever the thread count.
// `progress` is called from the writing threads, one call at a time.
Status WriteModel(const std::string& path, const ModelConfig& cfg, uint64_t seed, const WriteProgress& progress,
                  int threads = 0);
Status WriteModelPreset(const std::string& path, const std::string& preset, uint64_t seed,
                        const WriteProgress& progress);

// The metadata key holding the config as JSON.
inline constexpr const char* kConfigKey = "hotboot.config";
std::string ConfigToJson(const ModelConfig& c);
Result<ModelConfig> ConfigFromJson(const std::string& json);

}  // namespace hotboot
