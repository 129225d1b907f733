// Tensor parallelism in the Megatron manner: rank r of `world` holds query heads, KV heads and SwiGLU
// rows [r * n / world, (r + 1) * n / world) of each. q/k/v, gate and up are split by rows (column-parallel:
// each rank computes its own outputs), the attention output and down projections by columns (row-parallel:
// each rank computes a partial sum of the full width), and one all-reduce after each of those two makes
// the residual stream whole again on every rank. Embedding, norms and classifier are replicated.
//
// The model sees its rank's share as an attention config of world-times fewer heads (head size unchanged),
// so the KV cache, the RoPE loop and the attention backends (through the SDK, as always) see only local
// heads. The all-reduce is a Collective: NCCL across GPUs, or ThreadCollective for ranks that are threads
// of one process (how the CPU tests check the arithmetic).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "model_config.h"
#include "weights.h"

namespace llm {

struct ShardPlan {
  int world = 1, rank = 0;
  int q_heads = 0, q_head0 = 0;    // this rank's query heads
  int kv_heads = 0, kv_head0 = 0;  // this rank's KV heads
  int hidden = 0, hidden0 = 0;     // this rank's SwiGLU rows
  // The attention-side config of this rank: n_heads, n_kv_heads and dim divided by world (head size kept).
  ModelConfig local;
};

// The plan for `rank` of `world`; throws llm::Error naming the dimension that does not divide.
ShardPlan shard_plan(const ModelConfig& config, int world, int rank);

// One rank's weights: views into the full weights where a slice is contiguous (whole rows), copies where
// it is not (column slices of wo and w2; int8 when the slice keeps whole quantization groups, else fp32).
class ShardedWeights {
 public:
  ShardedWeights(const ModelWeights& full, const ModelConfig& config, const ShardPlan& plan);
  const ModelWeights& weights() const { return w_; }

 private:
  Matrix rows(const Matrix& m, int row0, int n) const;
  Matrix cols(const Matrix& m, int col0, int n);
  ModelWeights w_;
  std::vector<std::vector<float>> owned_f32_;
  std::vector<std::vector<int8_t>> owned_q_;
};

// Sums a buffer across the ranks of a group, in place, leaving the same bits on every rank.
class Collective {
 public:
  virtual ~Collective() = default;
  virtual int world() const = 0;
  virtual void all_reduce_sum(int rank, float* data, std::size_t count) = 0;
};

// Ranks that are threads of one process: each all_reduce_sum blocks until every rank has called it, then
// every rank sums all buffers in rank order (so all get bitwise the same result).
class ThreadCollective final : public Collective {
 public:
  explicit ThreadCollective(int world);
  int world() const override { return world_; }
  void all_reduce_sum(int rank, float* data, std::size_t count) override;
  // A rank that failed releases the others: every rank waiting, or arriving later, throws llm::Error.
  void abort();

 private:
  void barrier();
  int world_;
  bool aborted_ = false;
  std::vector<float*> buffers_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  long generation_ = 0;
};

}  // namespace llm
