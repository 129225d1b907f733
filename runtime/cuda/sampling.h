// Sampling on the GPU: for each row of logits, the token Sampler::pick chooses (sampler.h) for a uniform the
// host drew, so that a sampling decode step copies back one id per sequence rather than the logits (and
// the host does not sort a 32K vocabulary). Temperature softmax on the device; where top-k or top-p cut the
// tail, the candidates are sorted by probability (ties by id, as the host sorts them) with CUB's radix
// sort; the nucleus and the pick walk the running sums as the host does (in double; the totals may
// differ from the host's in the last bits, so a pick within that of a boundary can differ).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sampler.h"

namespace llm::cuda {

// Device memory for sample_rows over up to `rows` rows of `vocab` logits.
class SamplingWorkspace {
 public:
  // Bytes a workspace for (rows, vocab) takes (one allocation, carved up by `carve`).
  static size_t bytes(int rows, int vocab);
  // Lays the workspace over `memory` (bytes(rows, vocab) of device memory) and fills the constant parts on
  // `stream`.
  void carve(void* memory, int rows, int vocab, cudaStream_t stream);
  int rows() const { return rows_; }
  int vocab() const { return vocab_; }

 private:
  friend void sample_rows(const float*, int, int, const SamplingParams&, const float*, SamplingWorkspace&, int32_t*,
                          cudaStream_t);
  int rows_ = 0, vocab_ = 0;
  float* probs_ = nullptr;    // [rows][vocab]
  double* totals_ = nullptr;  // [rows]: sum of probs (in a fixed order), NaN where the row has no number
  uint64_t* keys_ = nullptr;  // [rows][vocab] (row, probability) sort keys, and sorted
  uint64_t* sorted_keys_ = nullptr;
  int32_t* ids_ = nullptr;  // [rows][vocab]: 0 .. vocab - 1 each row, and sorted
  int32_t* sorted_ids_ = nullptr;
  void* sort_temp_ = nullptr;
  size_t sort_temp_bytes_ = 0;
};

// ids[r] = Sampler::pick(logits + r * vocab, vocab, params, uniforms[r]) for r < rows (params.temperature
// > 0; uniforms on the device), or -1 where the row's logits hold no finite maximum. rows <= ws.rows(),
// vocab == ws.vocab().
void sample_rows(const float* logits, int rows, int vocab, const SamplingParams& params, const float* uniforms,
                 SamplingWorkspace& ws, int32_t* ids, cudaStream_t stream);

}  // namespace llm::cuda
