// The GPU twin of the reference model (server/src/cuda/), behind the same
// Model interface: Model::Load picks it when LoadOptions::device allows and
// a CUDA GPU is usable.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hotboot/model.h"

namespace hotboot {

// kNotFound when this build has no CUDA kernels or the host no usable GPU
// (Model::Load then uses the CPU under device "auto"); other codes when a
// GPU is there but the model could not be put on it.
// What both models accept in one Generate call (1..8 sequences, non-empty
// prompts of valid ids that fit max_seq_len with their max_tokens).
Status CheckBatch(const ModelConfig& c, const std::vector<GenerateRequest>& batch);

Result<std::unique_ptr<Model>> LoadGpuModel(const std::string& path, const LoadOptions& opts, LoadTimings* timings);

}  // namespace hotboot
