// Sampling on the GPU (sampling.h). One block per row: the temperature softmax and its total; where top-k
// or top-p cut the tail, one radix sort of every row's (row, probability) keys, stable, so that equal
// probabilities stay in id order as on the host; then the nucleus and the pick, each a block's walk of
// running sums in double. Every read and write of a row is coalesced (one block streams it), and every sum
// and scan runs in a fixed order: the same ids call after call.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cub/device/device_radix_sort.cuh>

#include "cuda_check.h"
#include "error.h"
#include "sampling.h"

namespace llm::cuda {
namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;
constexpr int kProbBits = 30;  // a probability in [0, 1] is a float below 2^30 as bits

size_t align(size_t n) { return (n + 255) / 256 * 256; }
int end_bit(int rows) { return kProbBits + 32 - __builtin_clz(static_cast<unsigned>(rows)); }

__device__ double block_sum(double v, double* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // (smem may still be read by a block_* call before)
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += smem[w];  // (every thread, the same order)
  return total;
}

__device__ float block_max(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float m = smem[0];
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, smem[w]);
  return m;
}

struct Scratch {
  double sums[kWarps];
  float fmax[kWarps];
  int found;
};

// The first index j in [0, n) whose running sum of value(0) .. value(j) reaches `target` (>= where
// `inclusive`, else >), or -1. Each warp takes a contiguous segment and reads it coalesced; the warps'
// totals, summed in warp order, say which segment the crossing is in, and that warp walks it 32 at a time
// with shuffle scans. Values are non-negative, so the running sum only grows. Every thread returns it.
template <typename Value>
__device__ int first_crossing(const Value& value, int n, double target, bool inclusive, Scratch& s) {
  if (n > 0 && (inclusive ? 0.0 >= target : 0.0 > target)) return 0;  // (the first element is always taken)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int seg = ((n + kWarps - 1) / kWarps + 31) / 32 * 32;
  const int begin = min(n, warp * seg), end = min(n, begin + seg);
  double own = 0.0;
  for (int j = begin + lane; j < end; j += 32) own += value(j);
  for (int o = 16; o > 0; o >>= 1) own += __shfl_xor_sync(0xffffffffu, own, o);
  __syncthreads();  // (s may still be read by a block_* call before)
  if (lane == 0) s.sums[warp] = own;
  if (threadIdx.x == 0) s.found = INT_MAX;
  __syncthreads();
  double before = 0.0;
  for (int w = 0; w < warp; ++w) before += s.sums[w];
  const double after = before + s.sums[warp];
  auto crossed = [&](double running) { return inclusive ? running >= target : running > target; };
  if (!crossed(before) && crossed(after)) {  // (one warp at most: the sums grow warp to warp)
    double running = before;
    for (int j0 = begin; j0 < end; j0 += 32) {
      const int j = j0 + lane;
      double incl = j < end ? value(j) : 0.0;
      for (int o = 1; o < 32; o <<= 1) {
        const double up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, j < end && crossed(running + incl));
      if (hit) {
        if (lane == 0) s.found = j0 + __ffs(hit) - 1;
        break;
      }
      running += __shfl_sync(0xffffffffu, incl, 31);
    }
    // Rounding may leave the walk short of the target the segment totals passed: the segment's last index.
    if (lane == 0 && s.found == INT_MAX) s.found = end - 1;
  }
  __syncthreads();
  const int found = s.found;
  return found == INT_MAX ? -1 : found;
}

// probs = exp((logits - max) / T) per row (0 for a logit that is not a number), their total, and
// (cut) the sort keys: (rows - 1 - row) above the probability's bits, so that a descending sort keeps the
// rows in order and sorts each by probability.
__global__ void __launch_bounds__(kThreads)
    softmax_kernel(const float* logits, int rows, int vocab, float temperature, bool keys_wanted, float* probs,
                   double* totals, uint64_t* keys) {
  __shared__ Scratch s;
  const int row = blockIdx.x;
  const float* l = logits + static_cast<int64_t>(row) * vocab;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kThreads) mx = fmaxf(mx, l[i]);  // (fmaxf skips NaN)
  mx = block_max(mx, s.fmax);
  const uint64_t row_key = static_cast<uint64_t>(rows - 1 - row) << kProbBits;
  if (!isfinite(mx)) {  // no number to pick from (NaN or infinite throughout, or an infinite logit)
    if (threadIdx.x == 0) totals[row] = NAN;
    // The row's keys still go in, as zeros: the sort spans every row, and keys left over from an earlier
    // call would carry another row's bits into the rows that have numbers.
    if (keys_wanted)
      for (int i = threadIdx.x; i < vocab; i += kThreads) keys[static_cast<int64_t>(row) * vocab + i] = row_key;
    return;
  }
  double own = 0.0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {  // (coalesced: one block writes the whole row)
    const float v = l[i];
    const float p = isnan(v) ? 0.0f : expf((v - mx) / temperature);
    probs[static_cast<int64_t>(row) * vocab + i] = p;
    if (keys_wanted) keys[static_cast<int64_t>(row) * vocab + i] = row_key | __float_as_uint(p);
    own += p;
  }
  const double total = block_sum(own, s.sums);
  if (threadIdx.x == 0) totals[row] = total;
}

__global__ void fill_ids_kernel(int32_t* ids, int vocab, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    ids[i] = static_cast<int32_t>(i % vocab);
}

// The pick, as Sampler::pick walks it: in id order when nothing is cut; otherwise over the sorted
// candidates, the first top_k, then the smallest prefix reaching top_p of their mass (of the row's total
// when top-p alone cuts), then the first whose running sum passes u times the kept sum.
__global__ void __launch_bounds__(kThreads)
    pick_kernel(int vocab, int top_k, float top_p, bool cut, const float* uniforms, const float* probs,
                const double* totals, const uint64_t* sorted_keys, const int32_t* sorted_ids, int32_t* ids) {
  __shared__ Scratch s;
  const int row = blockIdx.x;
  const double total = totals[row];
  if (isnan(total)) {
    if (threadIdx.x == 0) ids[row] = -1;
    return;
  }
  const double u = uniforms[row];
  const int64_t base = static_cast<int64_t>(row) * vocab;
  int id;
  if (!cut) {
    const float* p = probs + base;
    const int i = first_crossing([&](int j) { return static_cast<double>(p[j]); }, vocab, u * total, false, s);
    id = i >= 0 ? i : vocab - 1;
  } else {
    const uint64_t* k = sorted_keys + base;
    auto p = [&](int j) { return static_cast<double>(__uint_as_float(static_cast<uint32_t>(k[j] & 0x3fffffffu))); };
    int keep = top_k > 0 ? min(top_k, vocab) : vocab;
    auto prefix_sum = [&](int n) {
      double own = 0.0;
      for (int j = threadIdx.x; j < n; j += kThreads) own += p(j);
      return block_sum(own, s.sums);
    };
    if (top_p < 1.0f) {
      const double mass = keep == vocab ? total : prefix_sum(keep);
      const int i = first_crossing(p, keep, static_cast<double>(top_p) * mass, true, s);
      if (i >= 0) keep = i + 1;
    }
    const int i = first_crossing(p, keep, u * prefix_sum(keep), false, s);
    id = sorted_ids[base + (i >= 0 ? i : keep - 1)];
  }
  if (threadIdx.x == 0) ids[row] = id;
}

}  // namespace

size_t SamplingWorkspace::bytes(int rows, int vocab) {
  const size_t n = static_cast<size_t>(rows) * vocab;
  size_t sort = 0;
  LLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      nullptr, sort, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n), 0, end_bit(rows)));
  return align(n * 4) + align(rows * 8) + 2 * align(n * 8) + 2 * align(n * 4) + align(sort);
}

void SamplingWorkspace::carve(void* memory, int rows, int vocab, cudaStream_t stream) {
  const size_t n = static_cast<size_t>(rows) * vocab;
  char* p = static_cast<char*>(memory);
  auto take = [&](size_t bytes) {
    char* at = p;
    p += align(bytes);
    return at;
  };
  rows_ = rows, vocab_ = vocab;
  probs_ = reinterpret_cast<float*>(take(n * 4));
  totals_ = reinterpret_cast<double*>(take(rows * 8));
  keys_ = reinterpret_cast<uint64_t*>(take(n * 8));
  sorted_keys_ = reinterpret_cast<uint64_t*>(take(n * 8));
  ids_ = reinterpret_cast<int32_t*>(take(n * 4));
  sorted_ids_ = reinterpret_cast<int32_t*>(take(n * 4));
  sort_temp_bytes_ = bytes(rows, vocab) - static_cast<size_t>(p - static_cast<char*>(memory));
  sort_temp_ = p;
  fill_ids_kernel<<<static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096)), 256, 0, stream>>>(
      ids_, vocab, static_cast<int64_t>(n));
  LLM_CUDA_CHECK_LAUNCH();
}

void sample_rows(const float* logits, int rows, int vocab, const SamplingParams& params, const float* uniforms,
                 SamplingWorkspace& ws, int32_t* ids, cudaStream_t stream) {
  if (rows > ws.rows_ || vocab != ws.vocab_ || !(params.temperature > 0.0f))
    fail("sample_rows: {} rows of {} logits at temperature {} with a workspace for {} of {}", rows, vocab,
         params.temperature, ws.rows_, ws.vocab_);
  const bool cut = cuts_tail(params, vocab);
  softmax_kernel<<<rows, kThreads, 0, stream>>>(logits, rows, vocab, params.temperature, cut, ws.probs_, ws.totals_,
                                                ws.keys_);
  LLM_CUDA_CHECK_LAUNCH();
  if (cut) {
    size_t temp = ws.sort_temp_bytes_;
    LLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(ws.sort_temp_, temp, ws.keys_, ws.sorted_keys_, ws.ids_,
                                                             ws.sorted_ids_, rows * vocab, 0, end_bit(rows), stream));
  }
  pick_kernel<<<rows, kThreads, 0, stream>>>(vocab, params.top_k, params.top_p, cut, uniforms, ws.probs_, ws.totals_,
                                             ws.sorted_keys_, ws.sorted_ids_, ids);
  LLM_CUDA_CHECK_LAUNCH();
}

}  // namespace llm::cuda
