// The load-time specialisation's compile step (kernels_jit.h), which needs
// NVRTC but no GPU. Loading and running the image are checked against the
// CPU twins by kernels_gpu_compare on a GPU machine.
#include <gtest/gtest.h>

#include <string>

#include "hotboot/kernels_jit.h"

namespace hotboot::kernels::gpu {
namespace {

JitSpec SmallModel() {
  JitSpec s;
  s.arch = 90;
  s.gemv_k = {256, 256, 688};  // dim, attention output, hidden (a duplicate on purpose)
  s.norm_n = 256;
  return s;
}

TEST(JitSource, NamesOneEntryPointPerWidthAndRowCount) {
  const std::string src = JitSource(SmallModel());
  for (int m = 1; m <= 8; ++m) {
    EXPECT_NE(src.find("hb_gemv_k256_m" + std::to_string(m) + "("), std::string::npos) << m;
    EXPECT_NE(src.find("hb_gemv_k688_m" + std::to_string(m) + "("), std::string::npos) << m;
  }
  EXPECT_EQ(src.find("hb_gemv_k256_m9"), std::string::npos);
  EXPECT_NE(src.find("hb_rmsnorm_n256("), std::string::npos);
  // The duplicate width is emitted once (a second copy would not compile).
  EXPECT_EQ(src.find("hb_gemv_k256_m1("), src.rfind("hb_gemv_k256_m1("));
}

TEST(JitCompile, RejectsWidthsTheKernelsCannotTake) {
  JitSpec s = SmallModel();
  s.gemv_k = {250};
  Result<JitImage> r = JitCompile(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("GEMV width 250"), std::string::npos) << r.status().message();
  s = SmallModel();
  s.norm_n = 20000;
  EXPECT_EQ(JitCompile(s).status().code(), Code::kInvalidArgument);
  s = JitSpec{};
  EXPECT_EQ(JitCompile(s).status().code(), Code::kInvalidArgument);
}

TEST(JitCompile, NoCompilerIsNotFoundAndSaysWhatToDo) {
  Result<JitImage> r = JitCompile(SmallModel(), "/nonexistent/libnvrtc.so");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("HOTBOOT_NVRTC"), std::string::npos) << r.status().message();
}

TEST(JitCompile, CompilesACubinForTheModelsShapes) {
  Result<JitImage> r = JitCompile(SmallModel());
  if (!r.ok() && r.status().code() == Code::kNotFound) GTEST_SKIP() << r.status().message();
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_GT(r->cubin.size(), 1000u);
  EXPECT_EQ(r->cubin.substr(0, 4), std::string("\x7f"
                                               "ELF"));
  EXPECT_EQ(r->kernels, 2 * 8 + 1);
  EXPECT_GT(r->compile_ms, 0.0);
  EXPECT_FALSE(r->nvrtc.empty());
  // Every entry point is in the image's symbol table.
  for (const char* name : {"hb_gemv_k256_m1", "hb_gemv_k688_m8", "hb_rmsnorm_n256"}) {
    EXPECT_NE(r->cubin.find(name), std::string::npos) << name;
  }
}

TEST(JitCompile, AWidthLargerThanOneBatchOfLoadsCompiles) {
  // 8192 wide: 32 loads per lane, in four batches of eight; 5640: a ragged
  // tail.
  JitSpec s;
  s.arch = 90;
  s.gemv_k = {8192, 5640};
  s.norm_n = 5000;
  Result<JitImage> r = JitCompile(s);
  if (!r.ok() && r.status().code() == Code::kNotFound) GTEST_SKIP() << r.status().message();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kernels, 17);
}

TEST(JitCompile, AnArchitectureTheCompilerDoesNotKnowFailsWithItsLog) {
  JitSpec s = SmallModel();
  s.arch = 51;  // long gone from NVRTC
  Result<JitImage> r = JitCompile(s);
  if (!r.ok() && r.status().code() == Code::kNotFound) GTEST_SKIP() << r.status().message();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
  EXPECT_NE(r.status().message().find("sm_51"), std::string::npos) << r.status().message();
}

TEST(JitKernels, LoadRefusesBytesThatAreNotACubin) {
  JitImage img;
  img.spec = SmallModel();
  img.cubin = "not an ELF";
  Result<std::unique_ptr<JitKernels>> r = JitKernels::Load(img);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace hotboot::kernels::gpu
