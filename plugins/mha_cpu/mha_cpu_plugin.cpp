// mha_cpu.so: the CPU attention backend. Correct fp32 prefill and decode for any head dim and GQA ratio,
// multi-threaded with OpenMP and vectorized with AVX2/FMA when the CPU has it. It is the last link of
// the default chain, so it refuses nothing it could compute.
#include <llm/attention_backend.h>

#include <algorithm>
#include <exception>
#include <new>
#include <string>

#include "cpu_attention.h"

namespace {

thread_local std::string g_create_error;  // for failures before a context exists

}  // namespace

struct llm_backend_context {
  llm_attention_shape shape;
  const llm_host_services* host;  // the runtime's threads, or NULL
  std::string error;
};

namespace {

std::string probe_reason(const llm_device_info& device, const llm_attention_shape& shape) {
  if (device.kind != LLM_DEVICE_CPU) return "mha_cpu computes on the CPU and reads host memory only";
  if (shape.dtype != LLM_DTYPE_F32) return "mha_cpu supports fp32 only (the model asks for another dtype)";
  if (shape.head_dim < 1 || shape.num_q_heads < 1 || shape.num_kv_heads < 1) return "empty attention shape";
  if (shape.num_q_heads % shape.num_kv_heads != 0) return "num_q_heads is not a multiple of num_kv_heads";
  if (shape.kv_layout != LLM_KV_LAYOUT_CONTIGUOUS && shape.kv_layout != LLM_KV_LAYOUT_PAGED) return "unknown KV layout";
  return "";
}

llm_status probe(const llm_device_info* device, const llm_attention_shape* shape, llm_probe_result* result) {
  if (!device || !shape || !result) return LLM_ERR_INVALID_ARGUMENT;
  std::string reason = probe_reason(*device, *shape);
  result->supported = reason.empty();
  result->capabilities =
      reason.empty() ? LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_DETERMINISTIC : 0;
  reason.copy(result->reason, sizeof(result->reason) - 1);
  result->reason[std::min(reason.size(), sizeof(result->reason) - 1)] = '\0';
  return LLM_OK;
}

llm_status context_create(const llm_device_info* device, const llm_attention_shape* shape, llm_backend_context** out) {
  if (!out) return LLM_ERR_INVALID_ARGUMENT;
  *out = nullptr;
  if (!device || !shape) {
    g_create_error = "context_create: NULL device or shape";
    return LLM_ERR_INVALID_ARGUMENT;
  }
  if (std::string reason = probe_reason(*device, *shape); !reason.empty()) {
    g_create_error = reason;
    return LLM_ERR_UNSUPPORTED;
  }
  auto* ctx = new (std::nothrow) llm_backend_context{*shape, device->host, {}};
  if (!ctx) {
    g_create_error = "out of memory";
    return LLM_ERR_OUT_OF_MEMORY;
  }
  *out = ctx;
  return LLM_OK;
}

void context_destroy(llm_backend_context* ctx) { delete ctx; }

llm_status run(llm_backend_context* ctx, const llm_attention_args* args, bool decode) {
  if (!ctx || !args) return LLM_ERR_INVALID_ARGUMENT;
  try {
    if (std::string problem = mha_cpu::validate(ctx->shape, *args, decode); !problem.empty()) {
      ctx->error = (decode ? "decode: " : "prefill: ") + problem;
      return LLM_ERR_INVALID_ARGUMENT;
    }
    mha_cpu::attend(ctx->shape, *args, ctx->host);
    return LLM_OK;
  } catch (const std::exception& e) {  // nothing may unwind across the C boundary
    ctx->error = e.what();
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
    "mha_cpu",
    "1.0.0",
    LLM_DEVICE_CPU,
    /*priority=*/10,
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
