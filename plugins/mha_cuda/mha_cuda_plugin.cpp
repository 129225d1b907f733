// mha_cuda.so: the CUDA attention backend. A straightforward, correct prefill and decode for fp32, fp16
// and bf16 (fp32 accumulation), any head_dim up to 256, any GQA ratio, contiguous and paged KV caches;
// the safety net under faster GPU backends. Calls only enqueue kernels on the caller's stream (no host
// synchronisation, no allocation, no reads of device arrays), so they can be captured in a CUDA graph.
#include <cuda_runtime.h>
#include <llm/attention_backend.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <new>
#include <string>

#include "attention_kernels.h"
#include "cuda_plugin_support.h"

namespace {

using llm_plugin::cuda_message;

thread_local std::string g_create_error;  // for failures before a context exists

}  // namespace

struct llm_backend_context {
  llm_attention_shape shape{};
  int device = 0;
  int target_blocks = 0;       // blocks that fill the GPU (a few per multiprocessor)
  float* workspace = nullptr;  // split-KV partials, allocated once here, never inside a call
  size_t workspace_floats = 0;
  std::string error;
};

namespace {

std::string probe_reason(const llm_device_info& device, const llm_attention_shape& shape) {
  if (std::string r = llm_plugin::common_probe_reason("mha_cuda", device, shape, mha_cuda::min_built_arch());
      !r.empty())
    return r;
  if (shape.dtype != LLM_DTYPE_F32 && shape.dtype != LLM_DTYPE_F16 && shape.dtype != LLM_DTYPE_BF16)
    return "unsupported dtype " + std::to_string(shape.dtype) + " (mha_cuda serves fp32, fp16 and bf16)";
  if (shape.head_dim > mha_cuda::kMaxHeadDim)
    return "head_dim " + std::to_string(shape.head_dim) + " is above " + std::to_string(mha_cuda::kMaxHeadDim) +
           ", the most mha_cuda serves";
  return "";
}

constexpr uint64_t kCapabilities =
    LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_CUDA_GRAPH_SAFE | LLM_CAP_DETERMINISTIC;

llm_status probe(const llm_device_info* device, const llm_attention_shape* shape, llm_probe_result* result) {
  if (!device || !shape || !result) return LLM_ERR_INVALID_ARGUMENT;
  try {
    llm_plugin::fill_probe_result(result, probe_reason(*device, *shape), kCapabilities);
    return LLM_OK;
  } catch (...) {  // nothing may unwind across the C boundary
    return LLM_ERR_INTERNAL;
  }
}

llm_status create_checked(const llm_device_info& device, const llm_attention_shape& shape, llm_backend_context** out) {
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
  int major = 0, minor = 0;
  cudaError_t e = cudaSuccess;
  if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index)) != cudaSuccess) {
    g_create_error = cuda_message("context_create: cannot read the device's attributes", e);
    return LLM_ERR_DEVICE;
  }
  if (major < 8) {
    g_create_error = "context_create: CUDA device " + std::to_string(device.index) + " has compute capability " +
                     std::to_string(major) + "." + std::to_string(minor) + "; mha_cuda needs 8.0 or newer";
    return LLM_ERR_UNSUPPORTED;
  }
  if ((e = mha_cuda::check_kernel_image(shape.dtype, shape.head_dim)) != cudaSuccess) {
    cudaGetLastError();
    g_create_error = cuda_message(
        "context_create: no kernel of this mha_cuda.so runs on sm_" + std::to_string(major * 10 + minor), e);
    return LLM_ERR_UNSUPPORTED;
  }

  auto* ctx = new (std::nothrow) llm_backend_context;
  if (!ctx) {
    g_create_error = "context_create: out of host memory";
    return LLM_ERR_OUT_OF_MEMORY;
  }
  ctx->shape = shape;
  ctx->device = device.index;
  ctx->target_blocks = 4 * std::max(sms, 1);
  ctx->workspace_floats = mha_cuda::workspace_floats_needed(shape.head_dim, ctx->target_blocks);
  if ((e = cudaMalloc(reinterpret_cast<void**>(&ctx->workspace), ctx->workspace_floats * sizeof(float))) !=
      cudaSuccess) {
    cudaGetLastError();
    g_create_error =
        cuda_message("context_create: cannot allocate the " +
                         std::to_string(ctx->workspace_floats * sizeof(float) >> 10) + " KiB split-KV workspace",
                     e);
    delete ctx;
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

void context_destroy(llm_backend_context* ctx) {
  if (!ctx) return;
  if (ctx->workspace) {
    llm_plugin::DeviceGuard guard(ctx->device);
    cudaFree(ctx->workspace);
  }
  delete ctx;
}

llm_status run(llm_backend_context* ctx, const llm_attention_args* args, bool decode) {
  if (!ctx) return LLM_ERR_INVALID_ARGUMENT;
  const char* call = decode ? "decode" : "prefill";
  try {
    if (!args) {
      ctx->error = std::string(call) + ": NULL args";
      return LLM_ERR_INVALID_ARGUMENT;
    }
    if (std::string problem = llm_plugin::validate_call(ctx->shape, *args, decode); !problem.empty()) {
      ctx->error = std::string(call) + " (layer " + std::to_string(args->layer) + "): " + problem;
      return LLM_ERR_INVALID_ARGUMENT;
    }
    const llm_attention_shape& s = ctx->shape;
    const llm_attention_args& a = *args;
    if (std::string problem = llm_plugin::wrong_current_device(ctx->device); !problem.empty()) {
      ctx->error = std::string(call) + " (layer " + std::to_string(a.layer) + "): " + problem;
      return LLM_ERR_DEVICE;
    }
    const mha_cuda::LaunchPlan plan =
        mha_cuda::plan_launch(s.head_dim, s.num_q_heads, s.num_kv_heads, a.num_seqs, a.max_q_len, a.max_kv_len,
                              ctx->target_blocks, ctx->workspace_floats);
    if (plan.blocks > 0x7fffffff) {
      ctx->error = std::string(call) + " (layer " + std::to_string(a.layer) + "): " + std::to_string(plan.blocks) +
                   " thread blocks exceed the grid limit (max_q_len " + std::to_string(a.max_q_len) + ")";
      return LLM_ERR_UNSUPPORTED;
    }
    mha_cuda::LaunchParams p{};
    p.dtype = s.dtype;
    p.head_dim = s.head_dim;
    p.num_q_heads = s.num_q_heads;
    p.num_kv_heads = s.num_kv_heads;
    p.num_seqs = a.num_seqs;
    p.max_q_len = a.max_q_len;
    p.causal = a.causal != 0;
    p.softmax_scale = a.softmax_scale;
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
    p.num_splits = plan.splits;
    p.workspace = ctx->workspace;
    p.workspace_floats = ctx->workspace_floats;
    const cudaError_t e = mha_cuda::launch_attention(p, plan, static_cast<cudaStream_t>(a.stream));
    if (e != cudaSuccess) {
      ctx->error = cuda_message(std::string(call) + " (layer " + std::to_string(a.layer) + "): kernel launch", e);
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
    "mha_cuda",
    "1.0.0",
    LLM_DEVICE_CUDA,
    /*priority=*/20,
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
