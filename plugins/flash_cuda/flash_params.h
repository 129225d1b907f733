// The kernels' view of one attention call and the launch functions the plugin entry calls. Plain host
// C++ (no device code), so the entry compiles with the host compiler.
//
// Rows. For one (sequence, kv head) the kernels work on "rows", the (query token j, group head g) pairs,
// row = j * group + g, query head = kv_head * group + g: a tile of rows covers the whole GQA group of a
// few tokens, so each K/V tile loaded serves every query head that reads it (no K/V copied per head).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace flash_cuda {

// Kernels are compiled for these head dims; a head_dim that is a multiple of 8 runs on the smallest one
// that holds it (the missing components are zero-filled in shared memory and never written out), so
// 64 and 128 run at full width and e.g. 8, 80 or 200 still run. Returns 0 when none holds it.
constexpr int kKernelDims[] = {16, 32, 64, 96, 128, 256};
int kernel_dim(int head_dim);

// KV cache addressing (llm_kv_offset, flattened for device code). Strides in elements.
struct KvParams {
  const void* k;
  const void* v;
  int64_t seq_stride, token_stride, head_stride;
  int32_t paged;
  int32_t block_size, max_blocks_per_seq;
  int64_t block_stride;
  const int32_t* block_table;
};

struct Params {
  int32_t fp16;  // 0: bf16, 1: fp16
  int32_t head_dim, num_q_heads, num_kv_heads, group;
  int32_t num_seqs, max_q_len, max_kv_len;  // max_*: bounds over the batch (the real lengths are on the device)
  int32_t causal;
  int32_t sm90_prefill;  // prefill on the sm_90a kernel (flash_prefill_sm90.cu) rather than the portable one
  int32_t sms;           // the device's multiprocessors (the sm_90a kernel's persistent grid)
  int32_t* schedule;     // device, 2 counters, zero between calls: the sm_90a kernel's items drawn, blocks done
  float scale_log2;      // softmax_scale * log2(e): scores go through exp2
  const void* q;
  int64_t q_token_stride, q_head_stride;
  void* out;
  int64_t out_token_stride, out_head_stride;
  const int32_t* q_start;   // device
  const int32_t* kv_len;    // device
  const int32_t* seq_slot;  // device
  KvParams kv;
  // split-KV decode
  int32_t num_splits;
  int32_t decode_tma;  // K and V through the copy engine where the cache allows (compute capability 9.0+)
  float* workspace;    // partials: [splits][seqs][q heads][kernel dim] of o, then [..][q heads] of (m, l)
  size_t workspace_floats;
  int32_t* split_counters;  // [seqs][kv heads][row tiles], zero between calls: blocks done per group
  int32_t cluster_merge;    // merge the splits through a thread block cluster (decode_cluster_fits)
  // Decode through the copy engine, as the runtime allows (llm_attention_args.overlap): early_start, launch
  // with programmatic dependent launch and start copying the cached tiles (those wholly before each
  // sequence's new token) before waiting on the kernel before; early_next, let the kernel after start
  // then too (without early_start: once the block's own loads are out).
  int32_t early_start;
  int32_t early_next;
};

// Prefill: any number of queries per sequence, causal or not, after any cached prefix.
cudaError_t launch_prefill(const Params& p, cudaStream_t stream);

// The Hopper prefill kernel (warpgroup MMAs, built for sm_90a only: compute capability 9.0 exactly) and
// the head dims it serves (those whose kernel is 64 or 128); the others stay on the portable kernel.
bool sm90_prefill_dim(int head_dim);
cudaError_t launch_prefill_sm90(const Params& p, cudaStream_t stream);
cudaError_t configure_prefill_sm90(bool fp16, int head_dim);

// Decode plan: how many key splits a decode call uses on a GPU of `sms` multiprocessors, bounded by the
// workspace and the keys; `wanted` > 0 asks for that many (at most the bound). Host arithmetic only
// (p.max_kv_len is an upper bound; the device reads the real lengths).
constexpr int kMaxSplits = 32;
int decode_splits(const Params& p, int sms, size_t workspace_floats, int wanted = 0);
size_t decode_workspace_floats(int head_dim, int num_q_heads, int max_batch);  // head_dim: the real one
size_t decode_counter_ints(int num_q_heads, int num_kv_heads, int max_batch);
constexpr size_t kScheduleInts = 2;  // Params::schedule

// Decode's split merge through thread block clusters (compute capability 9.0, K and V through the copy
// engine): the splits of one (sequence, kv head, row tile) run as one cluster and merge in shared memory,
// where the other path takes a round of global writes, a fence, a counter and global reads. A cluster
// holds at most kMaxClusterSplits blocks. decode_cluster_capacity fills capacity[0 .. kMaxClusterSplits]
// with how many clusters of each size the current device holds at once for groups of `group` query heads
// a kv head (0: none); decode_cluster_fits says
// whether a call's plan runs in one wave of them, which is when p.cluster_merge may be set.
constexpr int kMaxClusterSplits = 16;
cudaError_t decode_cluster_capacity(bool fp16, int head_dim, int group, int* capacity);
bool decode_cluster_fits(const Params& p, const int* capacity);

// Decode: one query per sequence; p.num_splits from decode_splits.
cudaError_t launch_decode(const Params& p, cudaStream_t stream);

// Prepares the kernels for (fp16, head_dim) on the current device (shared-memory limits); fails when the
// library holds no code the device can run. Call at context creation, before any launch.
cudaError_t configure_prefill(bool fp16, int head_dim);
cudaError_t configure_decode(bool fp16, int head_dim);

// The lowest compute capability (major * 10 + minor) this library was built for.
int min_built_arch();

}  // namespace flash_cuda
