// The GPU model's weights file, built on the CPU: every tensor where the
// layout says, fused matrices in the CPU model's order, fp16 rounded as the
// CPU packs it, norms in fp32, and a name that depends on content only.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <filesystem>
#include <fstream>

#include "../../server/src/gpu_weights.h"
#include "hotboot/kernels.h"
#include "hotboot/node_cache.h"
#include "hotboot/presets.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;

class GpuWeightsFileTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-gpuw." + std::to_string(::getpid()));
    fs::create_directories(dir_);
    auto c = PresetConfig("tiny");
    ASSERT_TRUE(c.ok());
    cfg_ = *c;
    cfg_.n_layers = 2;
    cfg_.dtype = GetParam();
    model_ = (dir_ / "m.safetensors").string();
    ASSERT_TRUE(WriteModel(model_, cfg_, 7, nullptr).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<uint16_t> Source(const SafetensorsFile& f, const std::string& name) {
    const TensorInfo* t = f.Find(name);
    EXPECT_NE(t, nullptr) << name;
    std::vector<uint16_t> v(t ? t->nbytes / 2 : 0);
    if (t) {
      EXPECT_TRUE(f.Read(*t, v.data()).ok());
    }
    return v;
  }
  uint16_t AsBf16(uint16_t src) {
    return cfg_.dtype == "fp16" ? kernels::F32ToBf16(kernels::F16ToF32(src)) : src;
  }

  fs::path dir_;
  ModelConfig cfg_;
  std::string model_;
};

TEST_P(GpuWeightsFileTest, TensorsLandWhereTheLayoutSays) {
  auto f = SafetensorsFile::Open(model_);
  ASSERT_TRUE(f.ok());
  auto w = WriteGpuWeightsFile(*f, cfg_, (dir_ / "w").string());
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(fs::file_size(w->path), w->layout.file_bytes);
  std::ifstream in(w->path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& t : w->layout.tensors) EXPECT_EQ(t.offset % kGpuTensorAlign, 0u) << t.name;

  // Layer 1's qkv: q rows, then k, then v, each a copy of its source row.
  const GpuTensor* qkv = w->layout.Find("layers.1.qkv");
  ASSERT_NE(qkv, nullptr);
  const int64_t hd = cfg_.dim / cfg_.n_heads;
  auto k_src = Source(*f, "model.layers.1.self_attn.k_proj.weight");
  const int64_t k_row0 = cfg_.n_heads * hd;
  for (int64_t r : {int64_t{0}, cfg_.n_kv_heads * hd - 1}) {
    for (int64_t col : {int64_t{0}, int64_t{cfg_.dim - 1}}) {
      uint16_t got;
      std::memcpy(&got, bytes.data() + qkv->offset + ((k_row0 + r) * qkv->cols + col) * 2, 2);
      EXPECT_EQ(got, AsBf16(k_src[static_cast<size_t>(r * cfg_.dim + col)])) << r << "," << col;
    }
  }
  // The final norm in fp32.
  const GpuTensor* norm = w->layout.Find("final_norm");
  ASSERT_NE(norm, nullptr);
  EXPECT_TRUE(norm->f32);
  auto n_src = Source(*f, "model.norm.weight");
  float got;
  std::memcpy(&got, bytes.data() + norm->offset + 4 * 5, 4);
  const float want = cfg_.dtype == "fp16" ? kernels::F16ToF32(n_src[5]) : kernels::Bf16ToF32(n_src[5]);
  EXPECT_EQ(got, want);
}

TEST_P(GpuWeightsFileTest, TheNameIsTheContent) {
  auto f = SafetensorsFile::Open(model_);
  ASSERT_TRUE(f.ok());
  auto a = WriteGpuWeightsFile(*f, cfg_, (dir_ / "w").string());
  auto b = WriteGpuWeightsFile(*f, cfg_, (dir_ / "w").string());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->path, b->path);
  ASSERT_TRUE(WriteModel(model_, cfg_, 8, nullptr).ok());  // other weights
  auto g = SafetensorsFile::Open(model_);
  ASSERT_TRUE(g.ok());
  auto c = WriteGpuWeightsFile(*g, cfg_, (dir_ / "w").string());
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->path, c->path);
  // No temporaries left behind.
  for (const auto& e : fs::directory_iterator(dir_ / "w")) {
    EXPECT_EQ(e.path().filename().string().rfind(".gpu-loading", 0), std::string::npos);
  }
}

// The hash is computed while the pieces are written (one stream behind
// the readers): it must be the whole file's XXH3-128 whatever the thread
// count, or a second server of the same model would take the published
// file for damaged.
TEST_P(GpuWeightsFileTest, TheNameIsTheWholeFilesHashWhateverTheThreads) {
  cfg_.vocab_size = 32768;  // a 24 MiB embedding and head: three 8 MiB pieces each
  ASSERT_TRUE(WriteModel(model_, cfg_, 7, nullptr).ok());
  auto f = SafetensorsFile::Open(model_);
  ASSERT_TRUE(f.ok());
  auto one = WriteGpuWeightsFile(*f, cfg_, (dir_ / "w1").string(), 1);
  auto many = WriteGpuWeightsFile(*f, cfg_, (dir_ / "w5").string(), 5);
  ASSERT_TRUE(one.ok() && many.ok());
  EXPECT_EQ(fs::path(one->path).filename(), fs::path(many->path).filename());
  const int fd = ::open(many->path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto h = HashFileXxh128(fd, many->path);
  ::close(fd);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(fs::path(many->path).filename().string(), "gpu-weights-" + *h + ".bin");
  std::ifstream a(one->path, std::ios::binary), b(many->path, std::ios::binary);
  EXPECT_TRUE(std::equal(std::istreambuf_iterator<char>(a), {}, std::istreambuf_iterator<char>(b), {}));
}

TEST_P(GpuWeightsFileTest, AConfigThatDoesNotMatchTheFileIsCorrupt) {
  auto f = SafetensorsFile::Open(model_);
  ASSERT_TRUE(f.ok());
  ModelConfig wrong = cfg_;
  wrong.hidden_dim += 16;
  auto w = WriteGpuWeightsFile(*f, wrong, (dir_ / "w").string());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kCorrupt);
  EXPECT_NE(w.status().message().find("gate_proj"), std::string::npos) << w.status().message();
  EXPECT_TRUE(!fs::exists(dir_ / "w") || fs::is_empty(dir_ / "w"));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuWeightsFileTest, ::testing::Values("bf16", "fp16"));

}  // namespace
}  // namespace hotboot
