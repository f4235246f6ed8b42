#include "hotboot/presets.h"

#include <cmath>
#include <algorithm>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "bpe_tokenizer.h"
#include "hotboot/kernels.h"
#include "hotboot/safetensors.h"

namespace hotboot {

using json = nlohmann::json;

namespace {

ModelConfig Make(int dim, int layers, int heads, int kv, int hidden, int vocab, int seq, bool tied) {
  ModelConfig c;
  c.dim = dim;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.hidden_dim = hidden;
  c.vocab_size = vocab;
  c.max_seq_len = seq;
  c.tied_embeddings = tied;
  c.dtype = "bf16";
  return c;
}

// xoshiro256** seeded by splitmix64: fast, and the same stream everywhere.
struct Rng {
  uint64_t s[4];
  explicit Rng(uint64_t seed) {
    for (auto& x : s) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      x = z ^ (z >> 31);
    }
  }
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t Next() {
    uint64_t r = Rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = Rotl(s[3], 45);
    return r;
  }
};

// Weights: values [first, first + n) of one tensor's stream of roughly
// N(0, stddev) values (or the constant stddev), in bf16 or fp16. The stream
// is cut into blocks of 64K values, each with its own generator seeded from
// (tensor seed, block), so any range can be made alone, on any thread, with
// the same bytes. One value per 64-bit draw: the sum of its four 16-bit
// lanes (Irwin-Hall, n = 4: mean 0, the given stddev, bounded at +-3.46
// sigma), scaled. No log/sin/cos: a Box-Muller pair cost ~40 ns, this ~2.
constexpr uint64_t kFillBlock = 1 << 16;

void FillNormalRange(uint16_t* out, uint64_t first, uint64_t n, double stddev, bool constant, bool fp16, uint64_t seed) {
  if (constant) {
    const float v = static_cast<float>(stddev);
    const uint16_t c = fp16 ? kernels::F32ToF16(v) : kernels::F32ToBf16(v);
    std::fill(out, out + n, c);
    return;
  }
  // Four uniform lanes on 0..65535: mean 4 * 32767.5, variance 4 * (65536^2 - 1) / 12.
  const float mean = 131070.0f;
  const float scale = static_cast<float>(stddev / std::sqrt(4.0 * (65536.0 * 65536.0 - 1.0) / 12.0));
  const uint64_t end = first + n;
  for (uint64_t b = first / kFillBlock; b * kFillBlock < end; ++b) {
    Rng rng(seed * 1000003 + b);
    const uint64_t lo = std::max(first, b * kFillBlock), hi = std::min(end, (b + 1) * kFillBlock);
    for (uint64_t i = b * kFillBlock; i < lo; ++i) rng.Next();  // a range that starts inside a block
    float vals[1024];
    for (uint64_t i = lo; i < hi; i += 1024) {
      const size_t m = static_cast<size_t>(std::min<uint64_t>(1024, hi - i));
      for (size_t j = 0; j < m; ++j) {
        const uint64_t u = rng.Next();
        const uint32_t sum = static_cast<uint32_t>(u & 0xffff) + static_cast<uint32_t>((u >> 16) & 0xffff) +
                             static_cast<uint32_t>((u >> 32) & 0xffff) + static_cast<uint32_t>(u >> 48);
        vals[j] = (static_cast<float>(sum) - mean) * scale;
      }
      fp16 ? kernels::F32ToF16(vals, out + (i - first), m) : kernels::F32ToBf16(vals, out + (i - first), m);
    }
  }
}

// Merges that spell common English words (with and without a leading space),
// so ordinary prompts tokenize into multi-byte tokens, then seeded pairs of
// earlier tokens up to the vocabulary size.
std::vector<std::pair<int32_t, int32_t>> MakeMerges(int vocab, uint64_t seed) {
  static const char* kWords[] = {
      "the", "and", "that", "have", "for", "not", "with", "you", "this", "but", "his", "from", "they", "say",
      "her", "she", "will", "one", "all", "would", "there", "their", "what", "out", "about", "who", "get",
      "which", "when", "make", "can", "like", "time", "just", "him", "know", "take", "people", "into", "year",
      "your", "good", "some", "could", "them", "see", "other", "than", "then", "now", "look", "only", "come",
      "its", "over", "think", "also", "back", "after", "use", "two", "how", "our", "work", "first", "well",
      "way", "even", "new", "want", "because", "any", "these", "give", "day", "most", "watch", "film", "movie",
      "book", "music", "play", "recommend", "next", "should", "liked", "loved", "story", "science", "fiction",
      "user", "assistant", "what", "tell", "me", "about", "ing", "tion", "ed", "er", "es", "ly", "re", "in",
      "on", "at", "to", "of", "is", "it", "a", "I", "deep", "sea", "night", "light", "part", "documentary",
      "three", "novels", "someone", "sentence", "each", "jazz", "hello", "quick", "brown", "fox", "robot"};
  const int32_t room = vocab - BpeTokenizer::kFirstMerge;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::map<std::string, int32_t> id_of;
  for (int i = 0; i < 256; ++i) id_of[std::string(1, static_cast<char>(i))] = i;
  auto add_word = [&](const std::string& w) {
    std::string prefix(1, w[0]);
    for (size_t i = 1; i < w.size() && static_cast<int32_t>(merges.size()) < room; ++i) {
      std::string next = prefix + w[i];
      if (!id_of.count(next)) {
        merges.emplace_back(id_of[prefix], static_cast<int32_t>(static_cast<unsigned char>(w[i])));
        id_of[next] = BpeTokenizer::kFirstMerge + static_cast<int32_t>(merges.size()) - 1;
      }
      prefix = next;
    }
  };
  for (const char* w : kWords) {
    add_word(w);
    add_word(std::string(" ") + w);
  }
  Rng rng(seed ^ 0x70c3);
  std::set<std::pair<int32_t, int32_t>> seen(merges.begin(), merges.end());
  while (static_cast<int32_t>(merges.size()) < room) {
    const int32_t limit = BpeTokenizer::kFirstMerge + static_cast<int32_t>(merges.size());
    auto pick = [&] {
      int32_t id;
      do {
        id = static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(limit));
      } while (id == BpeTokenizer::kBos || id == BpeTokenizer::kEos);
      return id;
    };
    std::pair<int32_t, int32_t> p{pick(), pick()};
    if (seen.insert(p).second) merges.push_back(p);
  }
  return merges;
}

}  // namespace

std::vector<std::string> PresetNames() { return {"tiny", "small", "1b", "8b"}; }

Result<ModelConfig> PresetConfig(const std::string& name) {
  if (name == "tiny") return Make(384, 6, 6, 2, 1024, 8192, 512, false);
  if (name == "small") return Make(768, 12, 12, 12, 2048, 32000, 1024, true);
  if (name == "1b") return Make(2048, 22, 32, 4, 5632, 32000, 2048, false);
  if (name == "8b") {
    // Llama-3-8B, with max_seq_len 4096 rather than its 8192: the GPU model
    // keeps fp32 K and V caches for 8 sequences at full length (32 layers x
    // 8 KV heads x 128 x 4 bytes x 2 = 256 KiB a position a sequence), 8 GiB
    // at 4096 and 16 GiB at 8192, beside 16 GB of weights: 4096 keeps a
    // replica near 25 GB, on a 40/48 GB GPU too. (They are freed before a
    // capture and made again after a restore, so neither the snapshot nor
    // the digest carries them.)
    ModelConfig c = Make(4096, 32, 32, 8, 14336, 128256, 4096, false);
    c.rope_theta = 500000.f;
    return c;
  }
  return InvalidArgument("unknown preset '" + name + "' (tiny, small, 1b, 8b)");
}

bool GpuOnly(const ModelConfig& c) { return ParameterCount(c) > kCpuMaxParameters; }

std::vector<std::string> CpuPresetNames() {
  std::vector<std::string> out;
  for (const auto& n : PresetNames()) {
    if (!GpuOnly(*PresetConfig(n))) out.push_back(n);
  }
  return out;
}

uint64_t ParameterCount(const ModelConfig& c) {
  const uint64_t hd = static_cast<uint64_t>(c.dim / c.n_heads);
  const uint64_t d = static_cast<uint64_t>(c.dim), h = static_cast<uint64_t>(c.hidden_dim);
  const uint64_t attn = d * hd * static_cast<uint64_t>(c.n_heads) * 2 + d * hd * static_cast<uint64_t>(c.n_kv_heads) * 2;
  const uint64_t layer = attn + 3 * d * h + 2 * d;
  const uint64_t emb = static_cast<uint64_t>(c.vocab_size) * d;
  return emb * (c.tied_embeddings ? 1 : 2) + layer * static_cast<uint64_t>(c.n_layers) + d;
}

std::string ConfigToJson(const ModelConfig& c) {
  return json{{"dim", c.dim}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads},
              {"hidden_dim", c.hidden_dim}, {"vocab_size", c.vocab_size}, {"max_seq_len", c.max_seq_len},
              {"rope_theta", c.rope_theta}, {"norm_eps", c.norm_eps}, {"tied_embeddings", c.tied_embeddings},
              {"dtype", c.dtype}, {"seed", c.seed}, {"architecture", "llama"}}
      .dump();
}

Result<ModelConfig> ConfigFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return Corrupt("model config is not a JSON object");
  ModelConfig c;
  try {
    c.dim = j.at("dim").get<int>();
    c.n_layers = j.at("n_layers").get<int>();
    c.n_heads = j.at("n_heads").get<int>();
    c.n_kv_heads = j.at("n_kv_heads").get<int>();
    c.hidden_dim = j.at("hidden_dim").get<int>();
    c.vocab_size = j.at("vocab_size").get<int>();
    c.max_seq_len = j.at("max_seq_len").get<int>();
    c.rope_theta = j.value("rope_theta", 10000.f);
    c.norm_eps = j.value("norm_eps", 1e-5f);
    c.tied_embeddings = j.value("tied_embeddings", false);
    c.dtype = j.value("dtype", "bf16");
    c.seed = j.value("seed", uint64_t{0});
  } catch (const json::exception& e) {
    return Corrupt(std::string("model config: ") + e.what());
  }
  auto bad = [&](const std::string& why) { return Corrupt("model config: " + why); };
  if (c.dim <= 0 || c.dim > 65536 || c.n_layers <= 0 || c.n_layers > 1024) return bad("dim/n_layers out of range");
  if (c.n_heads <= 0 || c.dim % c.n_heads != 0 || (c.dim / c.n_heads) % 2 != 0) return bad("dim must split into even-sized heads");
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) return bad("n_kv_heads must divide n_heads");
  if (c.hidden_dim <= 0 || c.hidden_dim > 1 << 20) return bad("hidden_dim out of range");
  if (c.vocab_size <= BpeTokenizer::kFirstMerge || c.vocab_size > 1 << 22) return bad("vocab_size out of range");
  if (c.max_seq_len <= 0 || c.max_seq_len > 1 << 16) return bad("max_seq_len out of range");
  return c;
}

Status WriteModel(const std::string& path, const ModelConfig& cfg_in, uint64_t seed, const WriteProgress& progress,
                  int threads) {
  ModelConfig cfg = cfg_in;
  cfg.seed = seed;
  const bool fp16 = cfg.dtype == "fp16";
  if (!fp16 && cfg.dtype != "bf16") return InvalidArgument("dtype must be bf16 or fp16");
  const DType dt = fp16 ? DType::kF16 : DType::kBF16;
  const int64_t d = cfg.dim, hd = cfg.dim / cfg.n_heads, h = cfg.hidden_dim, v = cfg.vocab_size;
  SafetensorsWriter w;
  w.SetMetadata(kConfigKey, ConfigToJson(cfg));
  w.SetMetadata("format", "pt");
  uint64_t tensor_index = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm) {
    const uint64_t tseed = seed + tensor_index++ * 7919;
    w.AddTensorRanges(name, dt, shape, [=](uint64_t offset, std::span<std::byte> dst) {
      if (offset % 2 != 0 || dst.size() % 2 != 0) return Internal("a 16-bit tensor cut at an odd byte");
      FillNormalRange(reinterpret_cast<uint16_t*>(dst.data()), offset / 2, dst.size() / 2, norm ? 1.0 : 0.02, norm,
                      fp16, tseed);
      return Status::Ok();
    });
  };
  add("model.embed_tokens.weight", {v, d}, false);
  for (int l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {d}, true);
    add(p + "self_attn.q_proj.weight", {cfg.n_heads * hd, d}, false);
    add(p + "self_attn.k_proj.weight", {cfg.n_kv_heads * hd, d}, false);
    add(p + "self_attn.v_proj.weight", {cfg.n_kv_heads * hd, d}, false);
    add(p + "self_attn.o_proj.weight", {d, cfg.n_heads * hd}, false);
    add(p + "post_attention_layernorm.weight", {d}, true);
    add(p + "mlp.gate_proj.weight", {h, d}, false);
    add(p + "mlp.up_proj.weight", {h, d}, false);
    add(p + "mlp.down_proj.weight", {d, h}, false);
  }
  add("model.norm.weight", {d}, true);
  if (!cfg.tied_embeddings) add("lm_head.weight", {v, d}, false);
  auto merges = std::make_shared<const std::vector<std::pair<int32_t, int32_t>>>(MakeMerges(cfg.vocab_size, seed));
  w.AddTensor("tokenizer.merges", DType::kI32, {static_cast<int64_t>(merges->size()), 2},
              [merges](std::span<std::byte> dst) {
                auto* out = reinterpret_cast<int32_t*>(dst.data());
                for (size_t i = 0; i < merges->size(); ++i) {
                  out[2 * i] = (*merges)[i].first;
                  out[2 * i + 1] = (*merges)[i].second;
                }
                return Status::Ok();
              });
  SafetensorsWriter::WriteOptions wo;
  wo.threads = threads;
  wo.progress = progress;
  return w.WriteAtomic(path, wo);
}

Status WriteModelPreset(const std::string& path, const std::string& preset, uint64_t seed, const WriteProgress& progress) {
  HB_ASSIGN_OR_RETURN(ModelConfig cfg, PresetConfig(preset));
  return WriteModel(path, cfg, seed, progress);
}

}  // namespace hotboot
