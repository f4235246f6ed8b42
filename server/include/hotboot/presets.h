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

// "tiny" (~15M parameters), "small" (~110M), "1b" (~1.1B, TinyLlama's shape).
Result<ModelConfig> PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();
// Parameters a config has (embeddings, layers, final norm, untied head).
uint64_t ParameterCount(const ModelConfig& c);

using WriteProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;
// Writes the model atomically; the same config and seed give the same bytes.
Status WriteModel(const std::string& path, const ModelConfig& cfg, uint64_t seed, const WriteProgress& progress);
Status WriteModelPreset(const std::string& path, const std::string& preset, uint64_t seed,
                        const WriteProgress& progress);

// The metadata key holding the config as JSON.
inline constexpr const char* kConfigKey = "hotboot.config";
std::string ConfigToJson(const ModelConfig& c);
Result<ModelConfig> ConfigFromJson(const std::string& json);

}  // namespace hotboot
