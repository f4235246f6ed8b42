#include "bpe_tokenizer.h"

#include <limits>

namespace hotboot {

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(std::vector<std::pair<int32_t, int32_t>> merges,
                                                            int32_t vocab_size) {
  if (vocab_size < kFirstMerge || static_cast<int64_t>(merges.size()) > vocab_size - kFirstMerge) {
    return Corrupt("tokenizer: " + std::to_string(merges.size()) + " merges do not fit a vocabulary of " +
                   std::to_string(vocab_size));
  }
  auto t = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  t->vocab_size_ = vocab_size;
  t->bytes_.resize(static_cast<size_t>(vocab_size));
  for (int i = 0; i < 256; ++i) t->bytes_[static_cast<size_t>(i)] = std::string(1, static_cast<char>(i));
  for (size_t i = 0; i < merges.size(); ++i) {
    const int32_t id = kFirstMerge + static_cast<int32_t>(i);
    auto [a, b] = merges[i];
    if (a < 0 || b < 0 || a >= id || b >= id || a == kBos || a == kEos || b == kBos || b == kEos) {
      return Corrupt("tokenizer: merge " + std::to_string(i) + " (" + std::to_string(a) + ", " + std::to_string(b) +
                     ") refers to an id that is not an earlier token");
    }
    t->bytes_[static_cast<size_t>(id)] = t->bytes_[static_cast<size_t>(a)] + t->bytes_[static_cast<size_t>(b)];
    t->rank_.emplace(Key(a, b), static_cast<int32_t>(i));  // the first definition of a pair wins
  }
  // Ids past the merges (a vocabulary larger than the merge table) decode to
  // nothing, like unused slots of real vocabularies.
  return t;
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  // Merge the lowest-ranked adjacent pair until none is left. Quadratic in
  // the worst case, fine for prompt-sized inputs.
  for (;;) {
    int32_t best = std::numeric_limits<int32_t>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      auto it = rank_.find(Key(ids[i], ids[i + 1]));
      if (it != rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == std::numeric_limits<int32_t>::max()) break;
    // Apply this merge everywhere, left to right.
    const int32_t a = ids[at], b = ids[at + 1], merged = kFirstMerge + best;
    std::vector<int32_t> out;
    out.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i + 1 < ids.size() && ids[i] == a && ids[i + 1] == b) {
        out.push_back(merged);
        ++i;
      } else {
        out.push_back(ids[i]);
      }
    }
    ids.swap(out);
  }
  return ids;
}

std::string BpeTokenizer::Decode(std::span<const int32_t> ids) const {
  std::string s;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size_) s += bytes_[static_cast<size_t>(id)];
  }
  return s;
}

Result<std::unique_ptr<BpeTokenizer>> LoadTokenizer(const SafetensorsFile& f, int32_t vocab_size) {
  const TensorInfo* mt = f.Find("tokenizer.merges");
  if (!mt || mt->dtype != DType::kI32 || mt->shape.size() != 2 || mt->shape[1] != 2) {
    return Corrupt(f.path() + ": tensor 'tokenizer.merges' (I32 [n, 2]) is missing or malformed");
  }
  std::vector<int32_t> raw(mt->numel());
  HB_RETURN_IF_ERROR(f.Read(*mt, raw.data()));
  std::vector<std::pair<int32_t, int32_t>> merges;
  for (size_t i = 0; i + 1 < raw.size(); i += 2) merges.emplace_back(raw[i], raw[i + 1]);
  auto tok = BpeTokenizer::Create(std::move(merges), vocab_size);
  if (!tok.ok()) return tok.status().Prefixed(f.path());
  return tok;
}

}  // namespace hotboot
