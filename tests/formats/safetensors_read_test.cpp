#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "hotboot/safetensors.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-st-test." + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& n) { return (dir_ / n).string(); }

  // A raw file: 8-byte length, header text, data bytes.
  std::string Raw(const std::string& header, const std::string& data) {
    std::string b;
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(n >> (8 * i)));
    return b + header + data;
  }
  Status OpenRaw(const std::string& bytes) {
    std::ofstream(P("raw.safetensors"), std::ios::binary) << bytes;
    auto f = SafetensorsFile::Open(P("raw.safetensors"));
    return f.ok() ? Status::Ok() : f.status();
  }
  fs::path dir_;
};

TEST_F(Safetensors, RoundTripStreamsEveryTensor) {
  SafetensorsWriter w;
  w.SetMetadata("hotboot.config", "{\"dim\":4}");
  w.AddTensor("a", DType::kBF16, {2, 3}, [](std::span<std::byte> d) {
    for (size_t i = 0; i < d.size(); ++i) d[i] = std::byte(i);
    return Status::Ok();
  });
  w.AddTensor("merges", DType::kI32, {1, 2}, [](std::span<std::byte> d) {
    int32_t v[2] = {7, -1};
    std::memcpy(d.data(), v, 8);
    return Status::Ok();
  });
  ASSERT_TRUE(w.WriteAtomic(P("m.safetensors")).ok());
  auto f = SafetensorsFile::Open(P("m.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->metadata().at("hotboot.config"), "{\"dim\":4}");
  const TensorInfo* a = f->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->nbytes, 12u);
  EXPECT_EQ(a->offset % 8, 0u);  // header padded to 8 bytes
  uint8_t buf[12];
  ASSERT_TRUE(f->Read(*a, buf).ok());
  for (int i = 0; i < 12; ++i) EXPECT_EQ(buf[i], i);
  int32_t m[2];
  ASSERT_TRUE(f->Read(*f->Find("merges"), m).ok());
  EXPECT_EQ(m[1], -1);
  EXPECT_EQ(f->Find("nope"), nullptr);
}

TEST_F(Safetensors, FailedFillLeavesNoFile) {
  SafetensorsWriter w;
  w.AddTensor("a", DType::kF32, {4}, [](std::span<std::byte>) { return IoError("disk on fire"); });
  Status s = w.WriteAtomic(P("x.safetensors"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("disk on fire"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(Safetensors, DistrustsEveryNumber) {
  struct Case {
    std::string bytes;
    Code code;
    const char* want;
  } cases[] = {
      {"abc", Code::kTruncated, "too short"},
      {std::string("\x64\x00\x00\x00\x00\x00\x00\x00{\"a\"", 12), Code::kTruncated, "only 4 follow"},
      {std::string("\x00\x00\x00\x00\x00\x00\x01\x00", 8), Code::kCorrupt, "cap"},
      {Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "1234"), Code::kTruncated, "'a'"},
      {Raw("[1,2]", ""), Code::kCorrupt, "JSON object"},
      {Raw("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x"), Code::kUnsupported, "Q4"},
      {Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "12345678"), Code::kCorrupt, "shape"},
      {Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "1234"), Code::kCorrupt, "negative"},
      {Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", "1234"), Code::kCorrupt, "begin after end"},
      {Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],"
           "\"data_offsets\":[2,4]}}",
           "1234"),
       Code::kCorrupt, "overlaps"},
      {Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", "1234"),
       Code::kCorrupt, "overflows"},
      {Raw("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "x"), Code::kCorrupt, "lacks"},
  };
  for (const auto& c : cases) {
    Status s = OpenRaw(c.bytes);
    EXPECT_FALSE(s.ok()) << c.want;
    EXPECT_EQ(s.code(), c.code) << s.ToString();
    EXPECT_NE(s.message().find(c.want), std::string::npos) << s.message();
  }
}

}  // namespace
}  // namespace hotboot
