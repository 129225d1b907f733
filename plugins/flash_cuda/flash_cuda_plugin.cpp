// flash_cuda.so: FlashAttention kernels on tensor cores (bf16 and fp16 in, fp32 accumulation) for prefill
// (FlashAttention-2's design on any sm_80+ GPU; on Hopper FlashAttention-3's, see choose_prefill_kernel),
// and split-KV flash-decoding for decode; GQA without copying K/V per head, contiguous and
// paged KV caches, head dims that are multiples of 8 up to 256. Ahead of mha_cuda in the chain; whatever it does
// not serve (fp32, other head dims, unaligned tensors) it refuses with a reason, and the chain moves on.
// Calls only enqueue kernels on the caller's stream (no host synchronisation, no allocation, no reads of
// device arrays), so decode steps can be captured in a CUDA graph.
#include <cuda_runtime.h>
#include <llm/attention_backend.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

#include "cuda_plugin_support.h"
#include "flash_params.h"

namespace {

thread_local std::string g_create_error;  // for failures before a context exists
constexpr float kLog2e = 1.4426950408889634f;
constexpr uint64_t kCapabilities =
    LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_CUDA_GRAPH_SAFE | LLM_CAP_DETERMINISTIC;

}  // namespace

struct llm_backend_context {
  llm_attention_shape shape{};
  int device = 0;
  bool sm90_prefill = false;   // prefill on the Hopper kernel (see choose_prefill_kernel)
  float* workspace = nullptr;  // split-KV partials, allocated once here, never inside a call
  size_t workspace_floats = 0;
  int32_t* split_counters = nullptr;  // zeroed once here; the kernels leave them zero
  int32_t* schedule = nullptr;        // after them: the Hopper prefill's work counters
  int sms = 1;
  int decode_splits_wanted = 0;  // LLM_FLASH_DECODE_SPLITS, 0: chosen per call
  bool decode_tma = false;       // decode's K and V through the copy engine (see choose_decode_copy)
  bool cluster_merge = false;    // decode may merge its splits in a cluster (see choose_decode_merge)
  int cluster_capacity[flash_cuda::kMaxClusterSplits + 1] = {};  // decode_cluster_capacity
  std::string error;
};

namespace {

using llm_plugin::cuda_message;

std::string probe_reason(const llm_device_info& device, const llm_attention_shape& shape) {
  if (std::string r = llm_plugin::common_probe_reason("flash_cuda", device, shape, flash_cuda::min_built_arch());
      !r.empty())
    return r;
  if (shape.dtype != LLM_DTYPE_BF16 && shape.dtype != LLM_DTYPE_F16)
    return std::string("flash_cuda runs on tensor cores in bf16 and fp16; the session's dtype is ") +
           llm_plugin::dtype_name(shape.dtype);
  if (flash_cuda::kernel_dim(shape.head_dim) == 0)
    return "head_dim " + std::to_string(shape.head_dim) +
           " has no flash_cuda kernel (multiples of 8 up to 256 do; 64 and 128 at full width)";
  return "";
}

llm_status probe(const llm_device_info* device, const llm_attention_shape* shape, llm_probe_result* result) {
  if (!device || !shape || !result) return LLM_ERR_INVALID_ARGUMENT;
  try {
    llm_plugin::fill_probe_result(result, probe_reason(*device, *shape), kCapabilities);
    return LLM_OK;
  } catch (...) {  // nothing may unwind across the C boundary
    return LLM_ERR_INTERNAL;
  }
}

// The choice in environment variable `name`: "auto" when unset, else one of `a` and `b` (or "auto"). Any
// other value sets *problem, naming the variable, the value and what was expected.
std::string env_choice(const char* name, const char* a, const char* b, std::string* problem) {
  const char* env = std::getenv(name);
  const std::string want = env ? env : "auto";
  if (want != "auto" && want != a && want != b)
    *problem = std::string(name) + " is '" + want + "'; expected auto, " + a + " or " + b;
  return want;
}

// Which prefill kernel a context uses: the Hopper one (warpgroup MMAs) on compute capability 9.0 for the
// head dims it serves, the portable one otherwise. LLM_FLASH_PREFILL=sm80 forces the portable kernel
// (to compare the two), =sm90 requires the Hopper one; "auto" or unset chooses. Returns a problem, or "".
std::string choose_prefill_kernel(const llm_device_info& device, const llm_attention_shape& shape, bool* sm90) {
  std::string problem;
  const std::string want = env_choice("LLM_FLASH_PREFILL", "sm80", "sm90", &problem);
  if (!problem.empty()) return problem;
  const bool hopper = device.compute_major == 9 && device.compute_minor == 0;
  const bool fits = flash_cuda::sm90_prefill_dim(shape.head_dim);
  if (want == "sm90" && !(hopper && fits))
    return "LLM_FLASH_PREFILL=sm90, but the Hopper prefill kernel needs compute capability 9.0 (this device: " +
           std::to_string(device.compute_major) + "." + std::to_string(device.compute_minor) +
           ") and a head dim whose kernel is 64 or 128 (" + std::to_string(shape.head_dim) + ")";
  *sm90 = want != "sm80" && hopper && fits;
  return "";
}

// LLM_FLASH_DECODE_SPLITS=N (1-32) makes decode cut every sequence's keys into N ranges (fewer when the
// keys or the workspace do not allow N), to measure the plan decode_splits chooses against the others;
// unset or "auto" lets it choose. Returns a problem, or "".
std::string wanted_decode_splits(int* wanted) {
  const char* env = std::getenv("LLM_FLASH_DECODE_SPLITS");
  *wanted = 0;
  if (!env || std::string(env) == "auto") return "";
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  if (end == env || *end != '\0' || n < 1 || n > flash_cuda::kMaxSplits)
    return std::string("LLM_FLASH_DECODE_SPLITS is '") + env + "'; expected auto or a count from 1 to " +
           std::to_string(flash_cuda::kMaxSplits);
  *wanted = static_cast<int>(n);
  return "";
}

// How decode brings K and V into shared memory: through the copy engine (compute capability 9.0 and newer,
// contiguous caches, head dims whose kernel is a multiple of 64) or with cp.async (any GPU, any cache).
// LLM_FLASH_DECODE_COPY=cp_async forces cp.async (to compare the two, or to test it on a Hopper GPU),
// =tma requires a GPU with the copy engine; "auto" or unset chooses. Returns a problem, or "".
std::string choose_decode_copy(const llm_device_info& device, bool* tma) {
  std::string problem;
  const std::string want = env_choice("LLM_FLASH_DECODE_COPY", "cp_async", "tma", &problem);
  if (!problem.empty()) return problem;
  const bool hopper = device.compute_major >= 9;
  if (want == "tma" && !hopper)
    return "LLM_FLASH_DECODE_COPY=tma, but the copy engine needs compute capability 9.0 or newer (this device: " +
           std::to_string(device.compute_major) + "." + std::to_string(device.compute_minor) + ")";
  *tma = want != "cp_async" && hopper;
  return "";
}

// How decode merges its key splits: inside a thread block cluster where the plan fits one (compute
// capability 9.0, K and V through the copy engine), else through global memory. LLM_FLASH_DECODE_MERGE=
// global forces the global merge (to compare the two), =cluster requires a device that has clusters;
// "auto" or unset chooses per call. Returns a problem, or "".
std::string choose_decode_merge(const llm_device_info& device, bool tma, bool* cluster) {
  std::string problem;
  const std::string want = env_choice("LLM_FLASH_DECODE_MERGE", "global", "cluster", &problem);
  if (!problem.empty()) return problem;
  if (want == "cluster" && !tma)
    return "LLM_FLASH_DECODE_MERGE=cluster, but the cluster merge needs compute capability 9.0 or newer with "
           "decode's copies through the copy engine (this device: " +
           std::to_string(device.compute_major) + "." + std::to_string(device.compute_minor) + ")";
  *cluster = want != "global" && tma;
  return "";
}

void context_destroy(llm_backend_context* ctx) {
  if (!ctx) return;
  if (ctx->workspace || ctx->split_counters) {
    llm_plugin::DeviceGuard guard(ctx->device);
    cudaFree(ctx->workspace);
    cudaFree(ctx->split_counters);
  }
  delete ctx;
}

llm_status create_checked(const llm_device_info& device, const llm_attention_shape& shape, llm_backend_context** out) {
  bool sm90 = false, tma = false, cluster = false;
  int splits_wanted = 0;
  if (std::string problem = choose_prefill_kernel(device, shape, &sm90); !problem.empty()) {
    g_create_error = "context_create: " + problem;
    return LLM_ERR_INVALID_ARGUMENT;
  }
  if (std::string problem = choose_decode_copy(device, &tma); !problem.empty()) {
    g_create_error = "context_create: " + problem;
    return LLM_ERR_INVALID_ARGUMENT;
  }
  if (std::string problem = choose_decode_merge(device, tma, &cluster); !problem.empty()) {
    g_create_error = "context_create: " + problem;
    return LLM_ERR_INVALID_ARGUMENT;
  }
  if (std::string problem = wanted_decode_splits(&splits_wanted); !problem.empty()) {
    g_create_error = "context_create: " + problem;
    return LLM_ERR_INVALID_ARGUMENT;
  }
  if (std::string reason = probe_reason(device, shape); !reason.empty()) {
    g_create_error = "context_create: " + reason;
    return LLM_ERR_UNSUPPORTED;
  }
  int sms = 0;
  llm_status status = LLM_OK;
  if (std::string problem = llm_plugin::open_device(device.index, &sms, &status); !problem.empty()) {
    g_create_error = "context_create: " + problem;
    return status;
  }
  llm_plugin::DeviceGuard guard(device.index);
  if (guard.status() != cudaSuccess) {
    g_create_error =
        cuda_message("context_create: cannot use CUDA device " + std::to_string(device.index), guard.status());
    return LLM_ERR_DEVICE;
  }
  const bool fp16 = shape.dtype == LLM_DTYPE_F16;
  cudaError_t e = sm90 ? flash_cuda::configure_prefill_sm90(fp16, shape.head_dim)
                       : flash_cuda::configure_prefill(fp16, shape.head_dim);
  if (e == cudaSuccess) e = flash_cuda::configure_decode(fp16, shape.head_dim);
  int capacity[flash_cuda::kMaxClusterSplits + 1] = {};
  if (e == cudaSuccess && cluster)
    e = flash_cuda::decode_cluster_capacity(fp16, shape.head_dim, shape.num_q_heads / shape.num_kv_heads, capacity);
  if (e != cudaSuccess) {
    cudaGetLastError();
    g_create_error =
        cuda_message("context_create: the flash_cuda kernels for head_dim " + std::to_string(shape.head_dim) +
                         " cannot run on CUDA device " + std::to_string(device.index),
                     e);
    return LLM_ERR_UNSUPPORTED;
  }
  auto* ctx = new (std::nothrow) llm_backend_context;
  if (!ctx) {
    g_create_error = "context_create: out of host memory";
    return LLM_ERR_OUT_OF_MEMORY;
  }
  ctx->shape = shape;
  ctx->device = device.index;
  ctx->sm90_prefill = sm90;
  ctx->sms = sms;
  ctx->decode_splits_wanted = splits_wanted;
  ctx->decode_tma = tma;
  ctx->cluster_merge = cluster;
  std::copy(capacity, capacity + flash_cuda::kMaxClusterSplits + 1, ctx->cluster_capacity);
  ctx->workspace_floats = flash_cuda::decode_workspace_floats(shape.head_dim, shape.num_q_heads, shape.max_batch);
  const size_t split_ints = flash_cuda::decode_counter_ints(shape.num_q_heads, shape.num_kv_heads, shape.max_batch);
  const size_t counter_bytes = (split_ints + flash_cuda::kScheduleInts) * sizeof(int32_t);
  const size_t workspace_bytes = ctx->workspace_floats * sizeof(float);
  if ((e = cudaMalloc(reinterpret_cast<void**>(&ctx->workspace), workspace_bytes)) == cudaSuccess &&
      (e = cudaMalloc(reinterpret_cast<void**>(&ctx->split_counters), counter_bytes)) == cudaSuccess)
    if ((e = cudaMemset(ctx->split_counters, 0, counter_bytes)) == cudaSuccess)
      e = cudaStreamSynchronize(nullptr);  // calls come on other streams, which may not wait for this one
  ctx->schedule = ctx->split_counters ? ctx->split_counters + split_ints : nullptr;
  if (e != cudaSuccess) {
    cudaGetLastError();
    g_create_error =
        cuda_message("context_create: cannot allocate the " + std::to_string((workspace_bytes + counter_bytes) >> 10) +
                         " KiB split-KV workspace",
                     e);
    context_destroy(ctx);
    return LLM_ERR_OUT_OF_MEMORY;
  }
  *out = ctx;
  return LLM_OK;
}

llm_status context_create(const llm_device_info* device, const llm_attention_shape* shape, llm_backend_context** out) {
  if (!out) return LLM_ERR_INVALID_ARGUMENT;
  *out = nullptr;
  try {
    if (!device || !shape) {
      g_create_error = "context_create: NULL device or shape";
      return LLM_ERR_INVALID_ARGUMENT;
    }
    return create_checked(*device, *shape, out);
  } catch (const std::exception& e) {
    g_create_error = std::string("context_create: ") + e.what();
    return LLM_ERR_INTERNAL;
  }
}

// The kernels move 16-byte chunks (8 elements): rows must start on 16-byte boundaries.
std::string alignment_problem(const llm_attention_args& a) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const llm_kv_cache_view& kv = *a.kv;
  if (!aligned(a.q) || !aligned(a.out) || !aligned(kv.k) || !aligned(kv.v))
    return "q, out, k and v must be 16-byte aligned";
  const int64_t strides[] = {a.q_token_stride, a.q_head_stride, a.out_token_stride, a.out_head_stride,
                             kv.token_stride,  kv.head_stride,  kv.seq_stride,      kv.block_stride};
  for (int64_t s : strides)
    if (s % 8 != 0) return "every stride must be a multiple of 8 elements (16 bytes)";
  return "";
}

llm_status run(llm_backend_context* ctx, const llm_attention_args* args, bool decode) {
  if (!ctx) return LLM_ERR_INVALID_ARGUMENT;
  const char* call = decode ? "decode" : "prefill";
  try {
    if (!args) {
      ctx->error = std::string(call) + ": NULL args";
      return LLM_ERR_INVALID_ARGUMENT;
    }
    const std::string where = std::string(call) + " (layer " + std::to_string(args->layer) + "): ";
    if (std::string problem = llm_plugin::validate_call(ctx->shape, *args, decode); !problem.empty()) {
      ctx->error = where + problem;
      return LLM_ERR_INVALID_ARGUMENT;
    }
    if (std::string problem = alignment_problem(*args); !problem.empty()) {
      ctx->error = where + problem;
      return LLM_ERR_UNSUPPORTED;
    }
    if (std::string problem = llm_plugin::wrong_current_device(ctx->device); !problem.empty()) {
      ctx->error = where + problem;
      return LLM_ERR_DEVICE;
    }
    const llm_attention_shape& s = ctx->shape;
    const llm_attention_args& a = *args;
    flash_cuda::Params p{};
    p.fp16 = s.dtype == LLM_DTYPE_F16;
    p.head_dim = s.head_dim;
    p.num_q_heads = s.num_q_heads;
    p.num_kv_heads = s.num_kv_heads;
    p.group = s.num_q_heads / s.num_kv_heads;
    p.num_seqs = a.num_seqs;
    p.max_q_len = a.max_q_len;
    p.max_kv_len = a.max_kv_len;
    p.causal = a.causal != 0;
    p.sm90_prefill = ctx->sm90_prefill;
    p.decode_tma = ctx->decode_tma;
    p.sms = ctx->sms;
    p.schedule = ctx->schedule;
    p.scale_log2 = a.softmax_scale * kLog2e;
    p.q = a.q;
    p.q_token_stride = a.q_token_stride;
    p.q_head_stride = a.q_head_stride;
    p.out = a.out;
    p.out_token_stride = a.out_token_stride;
    p.out_head_stride = a.out_head_stride;
    p.q_start = a.q_start;
    p.kv_len = a.kv_len;
    p.seq_slot = a.seq_slot;
    const llm_kv_cache_view& kv = *a.kv;
    p.kv.k = kv.k;
    p.kv.v = kv.v;
    p.kv.seq_stride = kv.seq_stride;
    p.kv.token_stride = kv.token_stride;
    p.kv.head_stride = kv.head_stride;
    p.kv.paged = kv.layout == LLM_KV_LAYOUT_PAGED;
    if (p.kv.paged) {
      p.kv.block_size = kv.block_size;
      p.kv.max_blocks_per_seq = kv.max_blocks_per_seq;
      p.kv.block_stride = kv.block_stride;
      p.kv.block_table = kv.block_table;
    }
    p.workspace = ctx->workspace;
    p.workspace_floats = ctx->workspace_floats;
    cudaError_t e;
    if (decode) {
      p.split_counters = ctx->split_counters;
      // What the runtime lets decode overlap (SDK 1.2; a runtime of 1.1 or older passes no such member).
      const uint32_t overlap =
          a.struct_size >= offsetof(llm_attention_args, overlap) + sizeof(a.overlap) ? a.overlap : 0;
      p.early_start = (overlap & LLM_OVERLAP_EARLY_START) != 0;
      p.early_next = (overlap & LLM_OVERLAP_EARLY_NEXT) != 0;
      p.num_splits = flash_cuda::decode_splits(p, ctx->sms, ctx->workspace_floats, ctx->decode_splits_wanted);
      p.cluster_merge = ctx->cluster_merge && flash_cuda::decode_cluster_fits(p, ctx->cluster_capacity);
      e = flash_cuda::launch_decode(p, static_cast<cudaStream_t>(a.stream));
    } else {
      p.num_splits = 1;
      e = flash_cuda::launch_prefill(p, static_cast<cudaStream_t>(a.stream));
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      ctx->error = cuda_message(where + "kernel launch", e);
      return LLM_ERR_DEVICE;
    }
    return LLM_OK;
  } catch (const std::exception& e) {  // nothing may unwind across the C boundary
    ctx->error = std::string(call) + ": " + e.what();
    return LLM_ERR_INTERNAL;
  }
}

llm_status prefill(llm_backend_context* ctx, const llm_attention_args* args) { return run(ctx, args, false); }
llm_status decode(llm_backend_context* ctx, const llm_attention_args* args) { return run(ctx, args, true); }

const char* last_error(const llm_backend_context* ctx) { return ctx ? ctx->error.c_str() : g_create_error.c_str(); }

const llm_backend_iface kIface = {
    sizeof(llm_backend_iface),
    LLM_ABI_VERSION_MAJOR,
    LLM_ABI_VERSION_MINOR,
    "flash_cuda",
    "1.0.0",
    LLM_DEVICE_CUDA,
    /*priority=*/30,
    probe,
    context_create,
    context_destroy,
    prefill,
    decode,
    last_error,
    /*min_runtime_minor=*/0,
};

}  // namespace

extern "C" LLM_BACKEND_EXPORT const llm_backend_iface* llm_backend_entry(uint32_t abi_major) {
  (void)abi_major;  // we speak only our own major; the runtime compares and names both
  return &kIface;
}
