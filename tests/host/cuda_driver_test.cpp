// The real CudaDriver's loader (dlopen of libcuda.so.1): no driver is
// kNotFound with the reason, and the toolkit's stub library, where this host
// has one, walks the whole dlsym table and fails at cuInit.
#include <gtest/gtest.h>

#include <filesystem>

#include "hotboot/cuda_driver.h"

namespace hotboot {
namespace {

TEST(CudaDriverLoading, NoDriverIsNotFoundWithTheReason) {
  auto d = LoadCudaDriver("/nonexistent/libcuda.so.1");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kNotFound);
  EXPECT_NE(d.status().message().find("no NVIDIA driver"), std::string::npos);
}

TEST(CudaDriverLoading, TheToolkitStubLoadsButDoesNotInitialize) {
  // The stub has every symbol, so this walks the whole dlsym table; its
  // cuInit answers CUDA_ERROR_STUB_LIBRARY (34).
  std::string stub;
  for (const char* p : {"/usr/local/cuda/lib64/stubs/libcuda.so", "/usr/local/cuda/lib/stubs/libcuda.so"}) {
    if (std::filesystem::exists(p)) stub = p;
  }
  if (stub.empty()) GTEST_SKIP() << "no CUDA toolkit stub library here";
  auto d = LoadCudaDriver(stub);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kNotFound);
  EXPECT_NE(d.status().message().find("did not initialize: cuInit failed"), std::string::npos)
      << d.status().message();
}

TEST(CudaProcessState, EveryStateHasAName) {
  EXPECT_STREQ(CudaProcessStateName(CudaProcessState::kRunning), "running");
  EXPECT_STREQ(CudaProcessStateName(CudaProcessState::kLocked), "locked");
  EXPECT_STREQ(CudaProcessStateName(CudaProcessState::kCheckpointed), "checkpointed");
  EXPECT_STREQ(CudaProcessStateName(CudaProcessState::kFailed), "failed");
}

}  // namespace
}  // namespace hotboot
