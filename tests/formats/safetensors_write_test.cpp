// SafetensorsWriter: tensors filled and written by several threads at their
// offsets give the same file whatever the thread count and chunk size.
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "hotboot/safetensors.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;

class SafetensorsWrite : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-stw-test." + std::to_string(::getpid()));
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
  // Byte i of tensor t is a function of (t, i) only.
  static SafetensorsWriter Writer(std::atomic<int>* calls) {
    SafetensorsWriter w;
    w.SetMetadata("k", "v");
    for (int t = 0; t < 3; ++t) {
      w.AddTensorRanges("r" + std::to_string(t), DType::kU8, {1000 + 333 * t, 7},
                        [t, calls](uint64_t off, std::span<std::byte> d) {
                          ++*calls;
                          for (size_t i = 0; i < d.size(); ++i) d[i] = std::byte(((off + i) * 131 + t * 7) >> 3);
                          return Status::Ok();
                        });
    }
    w.AddTensor("whole", DType::kI32, {5}, [](std::span<std::byte> d) {
      for (size_t i = 0; i < d.size(); ++i) d[i] = std::byte(i);
      return Status::Ok();
    });
    return w;
  }
  fs::path dir_;
};

TEST_F(SafetensorsWrite, TheBytesDoNotDependOnThreadsOrChunks) {
  std::atomic<int> calls1{0}, calls2{0};
  SafetensorsWriter::WriteOptions one;
  one.threads = 1;
  ASSERT_TRUE(Writer(&calls1).WriteAtomic(P("a.safetensors"), one).ok());
  SafetensorsWriter::WriteOptions many;
  many.threads = 5;
  many.chunk_bytes = 1000;  // not a divisor of any tensor: ragged last chunks
  uint64_t last_done = 0, total = 0;
  int progress_calls = 0;
  many.progress = [&](uint64_t done, uint64_t t) {
    EXPECT_GT(done, last_done);  // one call at a time, monotonic
    last_done = done;
    total = t;
    ++progress_calls;
  };
  ASSERT_TRUE(Writer(&calls2).WriteAtomic(P("b.safetensors"), many).ok());
  EXPECT_EQ(calls1.load(), 3);       // one call per range-filled tensor at 8 MiB chunks
  EXPECT_GT(calls2.load(), 3 * 7);   // cut into many chunks
  EXPECT_EQ(last_done, total);
  EXPECT_EQ(total, (1000u + 1333u + 1666u) * 7u + 20u);
  EXPECT_EQ(progress_calls, calls2.load() + 1);
  const std::string a = Slurp(P("a.safetensors")), b = Slurp(P("b.safetensors"));
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  // And it reads back: every byte where the header says.
  auto f = SafetensorsFile::Open(P("b.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const TensorInfo* t2 = f->Find("r2");
  ASSERT_NE(t2, nullptr);
  std::vector<unsigned char> got(t2->nbytes);
  ASSERT_TRUE(f->Read(*t2, got.data()).ok());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], static_cast<unsigned char>((i * 131 + 14) >> 3)) << i;
  EXPECT_EQ(f->metadata().at("k"), "v");
}

TEST_F(SafetensorsWrite, AFailingChunkStopsTheWriteAndLeavesNothing) {
  SafetensorsWriter w;
  w.AddTensorRanges("big", DType::kU8, {1 << 20}, [](uint64_t off, std::span<std::byte> d) {
    if (off >= (512u << 10)) return IoError("generator ran dry (injected)");
    std::fill(d.begin(), d.end(), std::byte{1});
    return Status::Ok();
  });
  SafetensorsWriter::WriteOptions o;
  o.threads = 3;
  o.chunk_bytes = 64 << 10;
  Status s = w.WriteAtomic(P("x.safetensors"), o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("tensor 'big'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("generator ran dry"), std::string::npos) << s.message();
  EXPECT_TRUE(fs::is_empty(dir_));  // no temporary, no file
}

TEST_F(SafetensorsWrite, AChunkSizeOfZeroIsRefused) {
  SafetensorsWriter w;
  SafetensorsWriter::WriteOptions o;
  o.chunk_bytes = 0;
  EXPECT_EQ(w.WriteAtomic(P("z.safetensors"), o).code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace hotboot
