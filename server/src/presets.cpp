#include "hotboot/presets.h"

#include <cmath>
#include <map>
#include <set>
#include <thread>

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
  double Uniform() { return (static_cast<double>(Next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
};

// Fills n 16-bit values with N(0, std) (Box-Muller) or a constant, in bf16 or
// fp16, on all cores; blocks of 64K values have their own stream so the bytes
// do not depend on the thread count.
void FillNormal(uint16_t* out, size_t n, double stddev, bool constant, bool fp16, uint64_t seed) {
  const size_t kBlock = 1 << 16;
  const size_t blocks = (n + kBlock - 1) / kBlock;
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  auto work = [&](unsigned t) {
    for (size_t b = t; b < blocks; b += threads) {
      Rng rng(seed * 1000003 + b);
      const size_t end = std::min(n, (b + 1) * kBlock);
      for (size_t i = b * kBlock; i < end; i += 2) {
        float v0 = static_cast<float>(stddev), v1 = v0;
        if (!constant) {
          double u1 = rng.Uniform(), u2 = rng.Uniform();
          double r = std::sqrt(-2.0 * std::log(u1)) * stddev;
          v0 = static_cast<float>(r * std::cos(2 * M_PI * u2));
          v1 = static_cast<float>(r * std::sin(2 * M_PI * u2));
        }
        out[i] = fp16 ? kernels::F32ToF16(v0) : kernels::F32ToBf16(v0);
        if (i + 1 < end) out[i + 1] = fp16 ? kernels::F32ToF16(v1) : kernels::F32ToBf16(v1);
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
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

std::vector<std::string> PresetNames() { return {"tiny", "small", "1b"}; }

Result<ModelConfig> PresetConfig(const std::string& name) {
  if (name == "tiny") return Make(384, 6, 6, 2, 1024, 8192, 512, false);
  if (name == "small") return Make(768, 12, 12, 12, 2048, 32000, 1024, true);
  if (name == "1b") return Make(2048, 22, 32, 4, 5632, 32000, 2048, false);
  return InvalidArgument("unknown preset '" + name + "' (tiny, small, 1b)");
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

Status WriteModel(const std::string& path, const ModelConfig& cfg_in, uint64_t seed, const WriteProgress& progress) {
  ModelConfig cfg = cfg_in;
  cfg.seed = seed;
  const bool fp16 = cfg.dtype == "fp16";
  if (!fp16 && cfg.dtype != "bf16") return InvalidArgument("dtype must be bf16 or fp16");
  const DType dt = fp16 ? DType::kF16 : DType::kBF16;
  const int64_t d = cfg.dim, hd = cfg.dim / cfg.n_heads, h = cfg.hidden_dim, v = cfg.vocab_size;
  SafetensorsWriter w;
  w.SetMetadata(kConfigKey, ConfigToJson(cfg));
  w.SetMetadata("format", "pt");
  const uint64_t total = ParameterCount(cfg) * 2;
  uint64_t done = 0;
  uint64_t tensor_index = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm) {
    const uint64_t idx = tensor_index++;
    w.AddTensor(name, dt, shape, [&, idx, norm](std::span<std::byte> dst) {
      FillNormal(reinterpret_cast<uint16_t*>(dst.data()), dst.size() / 2, norm ? 1.0 : 0.02, norm, fp16, seed + idx * 7919);
      done += dst.size();
      if (progress) progress(done, total);
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
  auto merges = MakeMerges(cfg.vocab_size, seed);
  w.AddTensor("tokenizer.merges", DType::kI32, {static_cast<int64_t>(merges.size()), 2},
              [&](std::span<std::byte> dst) {
                auto* out = reinterpret_cast<int32_t*>(dst.data());
                for (size_t i = 0; i < merges.size(); ++i) {
                  out[2 * i] = merges[i].first;
                  out[2 * i + 1] = merges[i].second;
                }
                return Status::Ok();
              });
  return w.WriteAtomic(path);
}

Status WriteModelPreset(const std::string& path, const std::string& preset, uint64_t seed, const WriteProgress& progress) {
  HB_ASSIGN_OR_RETURN(ModelConfig cfg, PresetConfig(preset));
  return WriteModel(path, cfg, seed, progress);
}

}  // namespace hotboot
