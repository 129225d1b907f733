// The CUDA kernels behind mha_cuda.so and their launch functions, kept apart from the plugin entry so
// that the entry stays plain C++ (compiled by the host compiler) and sees no device code.
//
// Design (see attention_kernels.cu for the details): one thread block of kWarps warps serves a tile of
// "rows" of one (sequence, kv head): a row is one (query token, query head of that kv head's group), so
// a decode block serves the GQA group's heads together and reads each K/V row once for all of them.
// The warps split the block's keys; each warp streams its keys from global memory with an online softmax
// in fp32 (lanes split head_dim), then the warps' (max, sum, acc) are merged through shared memory. When
// the grid would be too small to fill the GPU (decode with a small batch and a long context), the keys are
// also split across blocks ("split-KV"): each split writes an unnormalised partial into a workspace the
// context allocated up front, and a second kernel merges the splits in a fixed order.
#pragma once

#include <cuda_runtime.h>
#include <llm/attention_backend.h>

#include <cstddef>
#include <cstdint>

namespace mha_cuda {

// The most head_dim the kernels serve.
constexpr int kMaxHeadDim = 256;

// Kernels are compiled for head_dim up to 64, 128 and 256 (runtime head_dim within the bucket); these
// are the buckets' limits. Returns the bucket index (0..2) for head_dim, or -1 when above kMaxHeadDim.
int head_dim_bucket(int head_dim);

// Rows (query token x group head pairs) one block serves for this head_dim.
int rows_per_block(int head_dim);

// The KV cache addressing of llm_kv_offset, flattened for device code.
struct KvParams {
  const void* k;
  const void* v;
  int64_t seq_stride, token_stride, head_stride;
  int32_t paged;
  int32_t block_size, max_blocks_per_seq;
  int64_t block_stride;
  const int32_t* block_table;
};

// One attention call as the kernels see it. All pointers are device pointers.
struct LaunchParams {
  int32_t dtype;  // llm_dtype of q, out and the cache
  int32_t head_dim, num_q_heads, num_kv_heads;
  int32_t num_seqs, max_q_len;
  int32_t causal;
  float softmax_scale;
  const void* q;
  int64_t q_token_stride, q_head_stride;
  void* out;
  int64_t out_token_stride, out_head_stride;
  const int32_t* q_start;
  const int32_t* kv_len;
  const int32_t* seq_slot;
  KvParams kv;
  int32_t num_splits;  // >= 1; > 1 needs the workspace below
  float* workspace;    // split partials: workspace_floats floats of device memory
  size_t workspace_floats;
};

// Grid geometry the host decides before a launch (no device data read).
struct LaunchPlan {
  int64_t tiles;   // row tiles per (sequence, kv head)
  int64_t blocks;  // blocks of the main kernel, splits included
  int splits;
};

// Plans a launch: row tiles from max_q_len, and the number of key splits so that the grid has about
// `target_blocks` blocks, within the workspace (`workspace_floats` floats) and the key count
// (`max_kv_len`). Pure host arithmetic.
LaunchPlan plan_launch(int head_dim, int num_q_heads, int num_kv_heads, int num_seqs, int max_q_len, int max_kv_len,
                       int target_blocks, size_t workspace_floats);

// Workspace floats a context needs so that plan_launch never has to cap the splits for this shape
// (blocks x splits stay below 2 * target_blocks).
size_t workspace_floats_needed(int head_dim, int target_blocks);

// Enqueues the attention on `stream`; returns the launch's error (cudaGetLastError), never synchronises.
cudaError_t launch_attention(const LaunchParams& p, const LaunchPlan& plan, cudaStream_t stream);

// cudaFuncGetAttributes on the kernel for (dtype, head_dim) on the current device: cudaSuccess when the
// library holds code the device can run.
cudaError_t check_kernel_image(int dtype, int head_dim);

// The lowest compute capability (major * 10 + minor) whose code this library was built with (from
// nvcc's __CUDA_ARCH_LIST__): a device below it cannot run the kernels.
int min_built_arch();

}  // namespace mha_cuda
