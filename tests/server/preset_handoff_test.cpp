// The 8b preset and the GPU-only rule, the model generator's determinism
// and distribution, and taking an fd out of another process (the server's
// side of the weights handoff).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "../../server/src/bpe_tokenizer.h"
#include "../../server/src/fd_handoff.h"
#include "hotboot/kernels.h"
#include "hotboot/model.h"
#include "hotboot/presets.h"
#include "hotboot/replica_server.h"
#include "hotboot/safetensors.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-preset-test." + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& n) { return (dir_ / n).string(); }
  static std::string Slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  fs::path dir_;
};

// ---------------------------------------------------------------- 8b

TEST(Preset8b, HasLlama3Shapes) {
  auto c = PresetConfig("8b");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->dim, 4096);
  EXPECT_EQ(c->n_layers, 32);
  EXPECT_EQ(c->n_heads, 32);
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->hidden_dim, 14336);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_FALSE(c->tied_embeddings);
  EXPECT_EQ(c->max_seq_len, 4096);
  EXPECT_EQ(c->rope_theta, 500000.f);
  // Meta's Llama-3-8B: 8,030,261,248 parameters.
  EXPECT_EQ(ParameterCount(*c), 8030261248u);
  EXPECT_TRUE(GpuOnly(*c));
  // Its config survives the file's metadata, rope_theta included.
  auto back = ConfigFromJson(ConfigToJson(*c));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->rope_theta, 500000.f);
  EXPECT_EQ(ParameterCount(*back), 8030261248u);
}

TEST(Preset8b, TheCpuPresetsStayAsTheyWere) {
  for (const std::string n : {"tiny", "small", "1b"}) {
    auto c = PresetConfig(n);
    ASSERT_TRUE(c.ok()) << n;
    EXPECT_FALSE(GpuOnly(*c)) << n;
  }
  EXPECT_EQ(PresetConfig("1b")->dim, 2048);
  EXPECT_EQ(ParameterCount(*PresetConfig("1b")), 1100048384u);
  EXPECT_EQ(CpuPresetNames(), (std::vector<std::string>{"tiny", "small", "1b"}));
  EXPECT_EQ(PresetNames(), (std::vector<std::string>{"tiny", "small", "1b", "8b"}));
}

// A file whose config claims 8b shapes and holds no weight at all: refused
// from the header, so quickly and without reading a tensor (there is none).
class CpuRefusal : public TempDir {
 protected:
  void SetUp() override {
    TempDir::SetUp();
    auto c = PresetConfig("8b");
    ASSERT_TRUE(c.ok());
    SafetensorsWriter w;
    w.SetMetadata(kConfigKey, ConfigToJson(*c));
    w.AddTensor("model.norm.weight", DType::kBF16, {4096}, [](std::span<std::byte> d) {
      std::fill(d.begin(), d.end(), std::byte{0});
      return Status::Ok();
    });
    path_ = P("claims-8b.safetensors");
    ASSERT_TRUE(w.WriteAtomic(path_).ok());
  }
  std::string path_;
};

TEST_F(CpuRefusal, TheCpuModelRefusesAGpuOnlyModelFromItsHeader) {
  const auto t = std::chrono::steady_clock::now();
  auto m = Model::Load(path_, LoadOptions{1, "none", "cpu"}, nullptr);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), Code::kFailedPrecondition) << m.status().ToString();
  EXPECT_NE(m.status().message().find("8.03e9 parameters is GPU only"), std::string::npos) << m.status().message();
  EXPECT_NE(m.status().message().find("--device cuda"), std::string::npos) << m.status().message();
  EXPECT_LT(std::chrono::steady_clock::now() - t, std::chrono::seconds(2));
  EXPECT_EQ(CheckServable(path_, "cpu").code(), Code::kFailedPrecondition);
  EXPECT_TRUE(CheckServable(path_, "cuda").ok());  // the GPU model's own load says if there is no GPU
}

TEST_F(CpuRefusal, AutoWithoutAGpuIsRefusedToo) {
  auto m = Model::Load(path_, LoadOptions{1, "none", "auto"}, nullptr);
  ASSERT_FALSE(m.ok());
  if (m.status().code() != Code::kFailedPrecondition) GTEST_SKIP() << "a GPU is usable here: " << m.status().ToString();
  EXPECT_NE(m.status().message().find("GPU only"), std::string::npos);
  EXPECT_EQ(CheckServable(path_, "auto").code(), Code::kFailedPrecondition);
}

TEST_F(CpuRefusal, TheServerExitsWithItsOwnCode) {
  ServerOptions o;
  o.model_path = path_;
  o.device = "cpu";
  std::vector<std::string> lines;
  ReplicaServer server(o, [&](const std::string& l) { lines.push_back(l); });
  EXPECT_EQ(server.Run(), kExitNotServableHere);
  EXPECT_EQ(server.state(), ReplicaState::kFailed);
  bool said = false;
  for (const auto& l : lines) said = said || l.find("GPU only") != std::string::npos;
  EXPECT_TRUE(said);
}

TEST_F(CpuRefusal, ACpuModelStillLoadsOnTheCpu) {
  ASSERT_TRUE(WriteModelPreset(P("tiny.safetensors"), "tiny", 3, nullptr).ok());
  EXPECT_TRUE(CheckServable(P("tiny.safetensors"), "cpu").ok());
}

// ---------------------------------------------------------------- generator

TEST_F(TempDir, ModelBytesDoNotDependOnTheThreadCount) {
  auto c = PresetConfig("tiny");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(WriteModel(P("one.safetensors"), *c, 11, nullptr, 1).ok());
  ASSERT_TRUE(WriteModel(P("three.safetensors"), *c, 11, nullptr, 3).ok());
  const std::string a = Slurp(P("one.safetensors"));
  EXPECT_GT(a.size(), 30u << 20);
  EXPECT_TRUE(a == Slurp(P("three.safetensors")));
  ASSERT_TRUE(WriteModel(P("other.safetensors"), *c, 12, nullptr, 3).ok());
  EXPECT_FALSE(a == Slurp(P("other.safetensors")));  // the seed matters
}

TEST_F(TempDir, WeightsAreRoughlyNormalWithTheirStddev) {
  ModelConfig c = *PresetConfig("tiny");
  c.n_layers = 1;
  for (const std::string dt : {"bf16", "fp16"}) {
    c.dtype = dt;
    ASSERT_TRUE(WriteModel(P("m.safetensors"), c, 5, nullptr).ok());
    auto f = SafetensorsFile::Open(P("m.safetensors"));
    ASSERT_TRUE(f.ok());
    const TensorInfo* t = f->Find("model.embed_tokens.weight");
    ASSERT_NE(t, nullptr);
    std::vector<uint16_t> raw(t->nbytes / 2);
    ASSERT_TRUE(f->Read(*t, raw.data()).ok());
    std::vector<float> v(raw.size());
    dt == "fp16" ? kernels::F16ToF32(raw.data(), v.data(), v.size()) : kernels::Bf16ToF32(raw.data(), v.data(), v.size());
    double sum = 0, sq = 0, fourth = 0;
    size_t beyond_2sd = 0;
    for (float x : v) {
      sum += x;
      sq += static_cast<double>(x) * x;
      fourth += std::pow(static_cast<double>(x), 4);
      beyond_2sd += std::fabs(x) > 0.04f;
    }
    const double n = static_cast<double>(v.size()), mean = sum / n, var = sq / n - mean * mean;
    EXPECT_NEAR(mean, 0.0, 1e-4) << dt;
    EXPECT_NEAR(std::sqrt(var), 0.02, 0.0005) << dt;
    // Irwin-Hall (n = 4): kurtosis 2.7 (a normal's is 3, a uniform's 1.8);
    // 4.3% beyond 2 sigma (a normal: 4.6%).
    EXPECT_NEAR(fourth / n / (var * var), 2.7, 0.1) << dt;
    EXPECT_NEAR(static_cast<double>(beyond_2sd) / n, 0.045, 0.01) << dt;
    const TensorInfo* norm = f->Find("model.norm.weight");
    ASSERT_NE(norm, nullptr);
    std::vector<uint16_t> nr(norm->nbytes / 2);
    ASSERT_TRUE(f->Read(*norm, nr.data()).ok());
    for (uint16_t x : nr) {
      ASSERT_EQ(dt == "fp16" ? kernels::F16ToF32(x) : kernels::Bf16ToF32(x), 1.0f);
    }
  }
}

// A Llama-3-sized vocabulary: its merges are made (not quadratically) and
// load as a tokenizer.
TEST_F(TempDir, A128kVocabularyGetsItsMergesQuickly) {
  ModelConfig c = *PresetConfig("tiny");
  c.dim = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 128;
  c.n_layers = 1;
  c.vocab_size = 128256;
  const auto t = std::chrono::steady_clock::now();
  ASSERT_TRUE(WriteModel(P("v.safetensors"), c, 9, nullptr).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t, std::chrono::seconds(20));
  auto f = SafetensorsFile::Open(P("v.safetensors"));
  ASSERT_TRUE(f.ok());
  auto tok = LoadTokenizer(*f, c.vocab_size);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 128256);
  const std::string text = "Recommend three science fiction novels";
  auto ids = (*tok)->Encode(text);
  EXPECT_LT(ids.size(), text.size());
  EXPECT_EQ((*tok)->Decode(ids), text);
}

// ---------------------------------------------------------------- pidfd_getfd

// A child holding a memfd with known bytes, until told to go.
class FdHolder {
 public:
  FdHolder() {
    int fdpipe[2], gopipe[2];
    EXPECT_EQ(::pipe(fdpipe), 0);
    EXPECT_EQ(::pipe(gopipe), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(fdpipe[0]);
      ::close(gopipe[1]);
      const int m = ::memfd_create("hotboot-handoff-test", MFD_CLOEXEC);
      const char msg[] = "device weights, as a restorer would hold them";
      if (m < 0 || ::write(m, msg, sizeof msg) != static_cast<ssize_t>(sizeof msg)) ::_exit(1);
      if (::write(fdpipe[1], &m, sizeof m) != static_cast<ssize_t>(sizeof m)) ::_exit(1);
      char c;
      (void)!::read(gopipe[0], &c, 1);  // until the parent closes its end
      ::_exit(0);
    }
    ::close(fdpipe[1]);
    ::close(gopipe[0]);
    go_ = gopipe[1];
    EXPECT_EQ(::read(fdpipe[0], &fd_, sizeof fd_), static_cast<ssize_t>(sizeof fd_));
    ::close(fdpipe[0]);
  }
  ~FdHolder() {
    ::close(go_);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  pid_t pid() const { return pid_; }
  int fd() const { return fd_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1, go_ = -1;
};

TEST(TakeFdFromProcess, TakesTheChildsFdByNumber) {
  FdHolder child;
  ASSERT_GT(child.pid(), 0);
  auto fd = TakeFdFromProcess(child.pid(), child.fd());
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  char buf[64] = {};
  const ssize_t n = ::pread(*fd, buf, sizeof buf, 0);
  EXPECT_STREQ(buf, "device weights, as a restorer would hold them");
  EXPECT_EQ(n, static_cast<ssize_t>(std::strlen(buf) + 1));
  EXPECT_TRUE(::fcntl(*fd, F_GETFD) & FD_CLOEXEC);
  // The same open file: a write through ours shows through the child's.
  ASSERT_EQ(::pwrite(*fd, "D", 1, 0), 1);
  auto again = TakeFdFromProcess(child.pid(), child.fd());
  ASSERT_TRUE(again.ok());
  char c = 0;
  EXPECT_EQ(::pread(*again, &c, 1, 0), 1);
  EXPECT_EQ(c, 'D');
  ::close(*again);
  ::close(*fd);
}

TEST(TakeFdFromProcess, AWrongFdOrPidIsAnErrorThatSaysSo) {
  FdHolder child;
  auto no_fd = TakeFdFromProcess(child.pid(), 987);
  ASSERT_FALSE(no_fd.ok());
  EXPECT_EQ(no_fd.status().code(), Code::kNotFound);
  EXPECT_NE(no_fd.status().message().find("has no fd 987"), std::string::npos) << no_fd.status().message();
  // A process that is gone (reaped: its pid is free).
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  int st = 0;
  ASSERT_EQ(::waitpid(gone, &st, 0), gone);
  auto no_pid = TakeFdFromProcess(gone, 0);
  ASSERT_FALSE(no_pid.ok());
  EXPECT_EQ(no_pid.status().code(), Code::kNotFound);
  EXPECT_NE(no_pid.status().message().find("does not exist"), std::string::npos) << no_pid.status().message();
  EXPECT_EQ(TakeFdFromProcess(1, 0).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(TakeFdFromProcess(child.pid(), -1).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace hotboot
