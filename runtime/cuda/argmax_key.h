// A greedy pick folded into the classifier's own launch (gemv.h, GemvEpilogue::ArgmaxF32): every warp folds
// its rows' logits into 64-bit keys with one atomic max each, so that no argmax kernel has to run (and be
// waited for) after the classifier. A key holds the logit's bits, made to order as unsigned integers, above
// the complement of the row, so the largest key is the largest logit and, among equal logits, the lowest
// row: argmax_rows' rule (cuda_kernels.h). As there, only logits above -FLT_MAX count: NaN and -inf never
// win, and a token whose logits hold no such number keeps the key 0, which decodes to an id outside every
// vocabulary. A warp folds its rows into one of its token's kArgmaxSlots slots (warp w into slot
// w % kArgmaxSlots), each slot on an L2 line of its own: atomics on one line queue behind each other (32
// slots on two lines slowed stories110M's step by 1.8% on the H200), and a block's keys gathered in shared
// memory first, behind two barriers, lengthened every block by more than the argmax kernel they replace
// cost (docs/PERFORMANCE.md). The slots must be zero before the classifier; the pick is the row of their
// largest.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LLM_ARGMAX_KEY_FN __host__ __device__ __forceinline__
#else
#define LLM_ARGMAX_KEY_FN inline
#endif

namespace llm::cuda {

constexpr int kArgmaxSlots = 32;       // a warp's lanes read a token's slots in one load
constexpr int kArgmaxSlotStride = 16;  // 64-bit words from slot to slot: a 128-byte line each
constexpr int kArgmaxTokenWords = kArgmaxSlots * kArgmaxSlotStride;  // a token's keys, slot i at i * stride
constexpr int32_t kArgmaxNone = 0x7fffffff;

// The key of logit `bits` (a float's bits) at row `row` (< 2^31); 0 where the logit is not above -FLT_MAX.
LLM_ARGMAX_KEY_FN uint64_t argmax_key(uint32_t bits, int row) {
  const bool negative = bits >> 31;
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return 0;               // NaN
  if (negative && magnitude >= 0x7f7fffffu) return 0;  // -FLT_MAX and -inf
  if (magnitude == 0) bits = 0;                        // -0 ties with +0
  const uint32_t ordered = negative && magnitude ? ~bits : bits | 0x80000000u;
  return static_cast<uint64_t>(ordered) << 32 | (0xffffffffu - static_cast<uint32_t>(row));
}

// The row a key names; kArgmaxNone for 0 (no logit above -FLT_MAX).
LLM_ARGMAX_KEY_FN int32_t argmax_key_row(uint64_t key) {
  return key ? static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key)) : kArgmaxNone;
}

// Where slot `slot` of token `token`'s keys is, in 64-bit words from the first token's.
LLM_ARGMAX_KEY_FN int argmax_slot_word(int token, int slot) {
  return token * kArgmaxTokenWords + slot * kArgmaxSlotStride;
}

// The largest of one token's slots (keys: the token's first word).
LLM_ARGMAX_KEY_FN uint64_t argmax_top_key(const uint64_t* keys) {
  uint64_t top = 0;
  for (int slot = 0; slot < kArgmaxSlots; ++slot) {
    const uint64_t k = keys[argmax_slot_word(0, slot)];
    top = k > top ? k : top;
  }
  return top;
}

}  // namespace llm::cuda

#undef LLM_ARGMAX_KEY_FN
