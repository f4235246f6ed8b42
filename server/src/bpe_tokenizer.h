// Byte-level BPE: ids 0..255 are bytes, 256 <bos>, 257 <eos>, then one id per
// merge (a pair of earlier ids), applied by rank like GPT-2's tokenizer.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hotboot/model.h"
#include "hotboot/safetensors.h"

namespace hotboot {

class BpeTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kFirstMerge = 258;

  // merges[i] = (a, b) defines id kFirstMerge + i; a and b must be earlier ids.
  static Result<std::unique_ptr<BpeTokenizer>> Create(std::vector<std::pair<int32_t, int32_t>> merges,
                                                      int32_t vocab_size);

  std::vector<int32_t> Encode(std::string_view text) const override;
  std::string Decode(std::span<const int32_t> ids) const override;
  int32_t bos() const override { return kBos; }
  int32_t eos() const override { return kEos; }
  int32_t vocab_size() const override { return vocab_size_; }

 private:
  static uint64_t Key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  int32_t vocab_size_ = 0;
  std::unordered_map<uint64_t, int32_t> rank_;  // pair -> merge index
  std::vector<std::string> bytes_;               // id -> its bytes
};

// The tokenizer stored in a model file (tensor "tokenizer.merges", I32 [n, 2]).
Result<std::unique_ptr<BpeTokenizer>> LoadTokenizer(const SafetensorsFile& f, int32_t vocab_size);

}  // namespace hotboot
