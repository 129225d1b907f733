// What every CUDA attention plugin of this project needs around its kernels: the SDK-call validation,
// the device guard, CUDA error messages and probe-result filling. Header-only and built only on the SDK
// and the CUDA runtime, so a plugin stays a plugin (nothing here reaches into runtime/).
#pragma once

#include <cuda_runtime.h>
#include <llm/attention_backend.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace llm_plugin {

inline std::string cuda_message(const std::string& what, cudaError_t e) {
  return what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case LLM_DTYPE_F32: return "fp32";
    case LLM_DTYPE_F16: return "fp16";
    case LLM_DTYPE_BF16: return "bf16";
    default: return "unknown";
  }
}

// Fills a probe verdict: supported when `reason` is empty.
inline void fill_probe_result(llm_probe_result* result, const std::string& reason, uint64_t capabilities) {
  result->supported = reason.empty();
  result->capabilities = reason.empty() ? capabilities : 0;
  const size_t n = std::min(reason.size(), sizeof(result->reason) - 1);
  reason.copy(result->reason, n);
  result->reason[n] = '\0';
}

// Makes `device` current for the lifetime of the guard, then restores the caller's device.
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

// The checks of a probe common to CUDA backends (device kind, compute capability, shape sanity); "" when
// they pass. `name` is the backend's, for the messages.
inline std::string common_probe_reason(const char* name, const llm_device_info& device,
                                       const llm_attention_shape& shape, int min_built_arch) {
  if (device.struct_size < sizeof(llm_device_info) || shape.struct_size < sizeof(llm_attention_shape))
    return "device info or attention shape is older than this plugin's ABI 1.0 structs";
  if (device.kind != LLM_DEVICE_CUDA)
    return std::string(name) + " computes on a CUDA GPU; the session's device is " +
           (device.kind == LLM_DEVICE_CPU ? "the CPU" : "not a CUDA GPU") + " (" + (device.name ? device.name : "?") +
           ")";
  const int cc = device.compute_major * 10 + device.compute_minor;
  const std::string gpu = device.name ? device.name : "?";
  if (cc < 80)
    return std::string(name) + " needs compute capability 8.0 or newer; " + gpu + " has " +
           std::to_string(device.compute_major) + "." + std::to_string(device.compute_minor);
  if (cc < min_built_arch)
    return "this " + std::string(name) + ".so holds GPU code for sm_" + std::to_string(min_built_arch) +
           " and newer only; " + gpu + " is sm_" + std::to_string(cc) +
           " (rebuild with CMAKE_CUDA_ARCHITECTURES including " + std::to_string(cc) + ")";
  if (shape.head_dim < 1 || shape.num_q_heads < 1 || shape.num_kv_heads < 1)
    return "empty attention shape (head_dim, num_q_heads and num_kv_heads must be >= 1)";
  if (shape.num_q_heads % shape.num_kv_heads != 0)
    return "num_q_heads " + std::to_string(shape.num_q_heads) + " is not a multiple of num_kv_heads " +
           std::to_string(shape.num_kv_heads);
  if (shape.kv_layout != LLM_KV_LAYOUT_CONTIGUOUS && shape.kv_layout != LLM_KV_LAYOUT_PAGED)
    return "unknown KV layout " + std::to_string(shape.kv_layout);
  if (shape.kv_layout == LLM_KV_LAYOUT_PAGED && shape.kv_block_size < 1) return "paged KV layout with no block size";
  if (shape.max_batch < 1 || shape.max_context < 1) return "max_batch and max_context must be >= 1";
  return "";
}

// Checks the device `index` exists, is current-able and reports its multiprocessor count; "" when fine.
inline std::string open_device(int index, int* sms, llm_status* status) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *status = LLM_ERR_DEVICE;
    return cuda_message("no usable CUDA device", e);
  }
  if (index < 0 || index >= count) {
    *status = LLM_ERR_DEVICE;
    return "CUDA device " + std::to_string(index) + " requested but " + std::to_string(count) + " present";
  }
  if ((e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, index)) != cudaSuccess) {
    cudaGetLastError();
    *status = LLM_ERR_DEVICE;
    return cuda_message("cannot read the device's attributes", e);
  }
  return "";
}

// A call made while another device than the context's is current (the caller's launches would land
// there): the problem, or "" when `device` is current.
inline std::string wrong_current_device(int device) {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == device) return "";
  cudaGetLastError();
  return "the current CUDA device is " + std::to_string(current) + " but the context was created for device " +
         std::to_string(device);
}

// Host-side checks of a prefill/decode call: only host values and pointers, never the device arrays.
inline std::string validate_call(const llm_attention_shape& shape, const llm_attention_args& a, bool decode) {
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

}  // namespace llm_plugin
