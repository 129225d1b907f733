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

namespace {

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

std::string cuda_message(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

const char* dtype_name(int dtype) {
  switch (dtype) {
    case LLM_DTYPE_F32: return "fp32";
    case LLM_DTYPE_F16: return "fp16";
    case LLM_DTYPE_BF16: return "bf16";
    default: return "unknown";
  }
}

std::string probe_reason(const llm_device_info& device, const llm_attention_shape& shape) {
  if (device.struct_size < sizeof(llm_device_info) || shape.struct_size < sizeof(llm_attention_shape))
    return "device info or attention shape is older than this plugin's ABI 1.0 structs";
  if (device.kind != LLM_DEVICE_CUDA)
    return std::string("mha_cuda computes on a CUDA GPU; the session's device is ") +
           (device.kind == LLM_DEVICE_CPU ? "the CPU" : "not a CUDA GPU") + " (" + (device.name ? device.name : "?") +
           ")";
  const int cc = device.compute_major * 10 + device.compute_minor;
  const std::string cc_text = std::to_string(device.compute_major) + "." + std::to_string(device.compute_minor);
  const std::string gpu = device.name ? device.name : "?";
  if (cc < 80) return "mha_cuda needs compute capability 8.0 or newer; " + gpu + " has " + cc_text;
  if (const int built = mha_cuda::min_built_arch(); cc < built)
    return "this mha_cuda.so holds GPU code for sm_" + std::to_string(built) + " and newer only; " + gpu + " is sm_" +
           std::to_string(cc) + " (rebuild with CMAKE_CUDA_ARCHITECTURES including " + std::to_string(cc) + ")";
  if (shape.dtype != LLM_DTYPE_F32 && shape.dtype != LLM_DTYPE_F16 && shape.dtype != LLM_DTYPE_BF16)
    return "unsupported dtype " + std::to_string(shape.dtype) + " (mha_cuda serves fp32, fp16 and bf16)";
  if (shape.head_dim < 1 || shape.num_q_heads < 1 || shape.num_kv_heads < 1)
    return "empty attention shape (head_dim, num_q_heads and num_kv_heads must be >= 1)";
  if (shape.head_dim > mha_cuda::kMaxHeadDim)
    return "head_dim " + std::to_string(shape.head_dim) + " is above " + std::to_string(mha_cuda::kMaxHeadDim) +
           ", the most mha_cuda serves";
  if (shape.num_q_heads % shape.num_kv_heads != 0)
    return "num_q_heads " + std::to_string(shape.num_q_heads) + " is not a multiple of num_kv_heads " +
           std::to_string(shape.num_kv_heads);
  if (shape.kv_layout != LLM_KV_LAYOUT_CONTIGUOUS && shape.kv_layout != LLM_KV_LAYOUT_PAGED)
    return "unknown KV layout " + std::to_string(shape.kv_layout);
  if (shape.kv_layout == LLM_KV_LAYOUT_PAGED && shape.kv_block_size < 1) return "paged KV layout with no block size";
  if (shape.max_batch < 1 || shape.max_context < 1) return "max_batch and max_context must be >= 1";
  return "";
}

void fill_result(llm_probe_result* result, const std::string& reason) {
  result->supported = reason.empty();
  result->capabilities = reason.empty() ? LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV |
                                              LLM_CAP_CUDA_GRAPH_SAFE | LLM_CAP_DETERMINISTIC
                                        : 0;
  const size_t n = std::min(reason.size(), sizeof(result->reason) - 1);
  reason.copy(result->reason, n);
  result->reason[n] = '\0';
}

llm_status probe(const llm_device_info* device, const llm_attention_shape* shape, llm_probe_result* result) {
  if (!device || !shape || !result) return LLM_ERR_INVALID_ARGUMENT;
  try {
    fill_result(result, probe_reason(*device, *shape));
    return LLM_OK;
  } catch (...) {  // nothing may unwind across the C boundary
    return LLM_ERR_INTERNAL;
  }
}

// Makes `device` current for the lifetime of the guard (allocation and release), then restores the
// caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    status_ = previous_ == device ? cudaSuccess : cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_;
};

llm_status create_checked(const llm_device_info& device, const llm_attention_shape& shape, llm_backend_context** out) {
  if (std::string reason = probe_reason(device, shape); !reason.empty()) {
    g_create_error = "context_create: " + reason;
    return LLM_ERR_UNSUPPORTED;
  }
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    g_create_error = cuda_message("context_create: no usable CUDA device", e);
    return LLM_ERR_DEVICE;
  }
  if (device.index < 0 || device.index >= count) {
    g_create_error = "context_create: CUDA device " + std::to_string(device.index) + " requested but " +
                     std::to_string(count) + " present";
    return LLM_ERR_DEVICE;
  }
  DeviceGuard guard(device.index);
  if (guard.status() != cudaSuccess) {
    g_create_error = cuda_message(("context_create: cannot use CUDA device " + std::to_string(device.index)).c_str(),
                                  guard.status());
    return LLM_ERR_DEVICE;
  }
  int major = 0, minor = 0, sms = 0;
  if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index)) != cudaSuccess) {
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
        ("context_create: no kernel of this mha_cuda.so runs on sm_" + std::to_string(major * 10 + minor)).c_str(), e);
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
        cuda_message(("context_create: cannot allocate the " +
                      std::to_string(ctx->workspace_floats * sizeof(float) >> 10) + " KiB split-KV workspace")
                         .c_str(),
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
    DeviceGuard guard(ctx->device);
    cudaFree(ctx->workspace);
  }
  delete ctx;
}

// Host-side checks of the call: only host values and pointers, never the device arrays.
std::string validate(const llm_attention_shape& shape, const llm_attention_args& a, bool decode) {
  if (a.struct_size < sizeof(llm_attention_args)) return "llm_attention_args.struct_size is too small";
  if (!a.q || !a.out || !a.q_start || !a.kv_len || !a.seq_slot || !a.kv)
    return "a required pointer (q, out, q_start, kv_len, seq_slot or kv) is NULL";
  const llm_kv_cache_view& kv = *a.kv;
  if (kv.struct_size < sizeof(llm_kv_cache_view)) return "llm_kv_cache_view.struct_size is too small";
  if (!kv.k || !kv.v) return "the KV cache's k or v pointer is NULL";
  if (a.dtype != shape.dtype || kv.dtype != shape.dtype)
    return std::string("dtype mismatch: the session is ") + dtype_name(shape.dtype) + ", q/out are " +
           dtype_name(a.dtype) + " and the KV cache is " + dtype_name(kv.dtype);
  if (kv.device_kind != LLM_DEVICE_CUDA) return "the KV cache is not in CUDA device memory";
  if (a.num_seqs < 1 || a.num_seqs > shape.max_batch)
    return "num_seqs " + std::to_string(a.num_seqs) + " is outside [1, " + std::to_string(shape.max_batch) + "]";
  if (a.max_q_len < 1) return "max_q_len " + std::to_string(a.max_q_len) + " is below 1";
  if (a.max_kv_len < 1) return "max_kv_len " + std::to_string(a.max_kv_len) + " is below 1";
  if (a.total_q_tokens < 0) return "total_q_tokens is negative";
  if (decode && (a.max_q_len != 1 || a.total_q_tokens != a.num_seqs))
    return "decode needs exactly one query per sequence (max_q_len " + std::to_string(a.max_q_len) +
           ", total_q_tokens " + std::to_string(a.total_q_tokens) + ", num_seqs " + std::to_string(a.num_seqs) + ")";
  if (a.q_token_stride < 0 || a.q_head_stride < 0 || a.out_token_stride < 0 || a.out_head_stride < 0 ||
      kv.token_stride < 0 || kv.head_stride < 0 || kv.seq_stride < 0)
    return "a stride is negative";
  if (!std::isfinite(a.softmax_scale)) return "softmax_scale is not finite";
  if (kv.layout == LLM_KV_LAYOUT_PAGED) {
    if (!kv.block_table || kv.block_size < 1 || kv.max_blocks_per_seq < 1 || kv.block_stride < 0)
      return "a paged KV cache needs a block table, a positive block size and blocks per sequence";
  } else if (kv.layout != LLM_KV_LAYOUT_CONTIGUOUS) {
    return "unknown KV layout " + std::to_string(kv.layout);
  }
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
    if (std::string problem = validate(ctx->shape, *args, decode); !problem.empty()) {
      ctx->error = std::string(call) + " (layer " + std::to_string(args->layer) + "): " + problem;
      return LLM_ERR_INVALID_ARGUMENT;
    }
    const llm_attention_shape& s = ctx->shape;
    const llm_attention_args& a = *args;
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess || current != ctx->device) {
      cudaGetLastError();
      ctx->error = std::string(call) + " (layer " + std::to_string(a.layer) + "): the current CUDA device is " +
                   std::to_string(current) + " but the context was created for device " + std::to_string(ctx->device);
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
      ctx->error =
          cuda_message((std::string(call) + " (layer " + std::to_string(a.layer) + "): kernel launch").c_str(), e);
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
