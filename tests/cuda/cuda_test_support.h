// GPU tests skip with a message where no usable GPU is present (CI has none); on the GPU machine they run.
#pragma once

#include <gtest/gtest.h>

#include "cuda_device.h"

#define LLM_REQUIRE_GPU()                                                       \
  do {                                                                          \
    const ::llm::cuda::DeviceStatus llm_gpu_ = ::llm::cuda::probe_device(0);    \
    if (!llm_gpu_.usable) GTEST_SKIP() << "no usable GPU: " << llm_gpu_.reason; \
  } while (0)
