#include "cuda_device.h"

#include <gtest/gtest.h>

#include "cuda_test_support.h"

namespace llm::cuda {
namespace {

TEST(CudaDevice, ProbeNeverThrowsAndExplainsWhenUnusable) {
  DeviceStatus s;
  ASSERT_NO_THROW(s = probe_device(0));
  if (!s.usable) {
    EXPECT_FALSE(s.reason.empty());
  } else {
    EXPECT_GE(s.compute_major, 8);
    EXPECT_GT(s.total_memory, 0u);
    EXPECT_FALSE(s.name.empty());
  }
  DeviceStatus missing = probe_device(99);
  EXPECT_FALSE(missing.usable);
  EXPECT_FALSE(missing.reason.empty());
}

TEST(CudaDevice, DeviceInfoDescribesTheGpu) {
  LLM_REQUIRE_GPU();
  DeviceStatus s = probe_device(0);
  llm_device_info d = device_info(s);
  EXPECT_EQ(d.kind, LLM_DEVICE_CUDA);
  EXPECT_EQ(d.compute_major, s.compute_major);
  EXPECT_STREQ(d.name, s.name.c_str());
}

}  // namespace
}  // namespace llm::cuda
