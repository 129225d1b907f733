// flaky_cpu.so: a test backend that computes exactly what mha_cpu computes (same code, same numbers)
// until its Nth attention call, which fails. N comes from LLM_FLAKY_FAIL_AT (default 3; 0: never).
// Used to prove that the chain falls back mid-generation with identical output. With LLM_FLAKY_BAD_AT=M
// its Mth call instead returns success with a bad result: a NaN in the output (LLM_FLAKY_BAD=nan, the
// default) or nothing written at all (LLM_FLAKY_BAD=skip), for the runtime's output check. With
// LLM_FLAKY_NO_CONTEXT=1 its context_create fails.
#include <llm/attention_backend.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cpu_attention.h"

struct llm_backend_context {
  llm_attention_shape shape;
  const llm_host_services* host;  // the runtime's threads, or NULL
  long calls;
  long fail_at;
  long bad_at;
  bool skip;  // the bad call writes nothing (else: one NaN)
  std::string error;
};

namespace {

llm_status probe(const llm_device_info* device, const llm_attention_shape* shape, llm_probe_result* result) {
  const bool ok = device->kind == LLM_DEVICE_CPU && shape->dtype == LLM_DTYPE_F32;
  result->supported = ok;
  result->capabilities = ok ? LLM_CAP_PREFILL | LLM_CAP_DECODE : 0;
  if (!ok) std::snprintf(result->reason, sizeof(result->reason), "flaky_cpu serves fp32 on the CPU only");
  return LLM_OK;
}

llm_status context_create(const llm_device_info* device, const llm_attention_shape* shape, llm_backend_context** out) {
  if (const char* refuse = std::getenv("LLM_FLAKY_NO_CONTEXT"); refuse && std::string(refuse) == "1")
    return LLM_ERR_OUT_OF_MEMORY;  // (as a backend whose workspace cannot be allocated)
  const char* env = std::getenv("LLM_FLAKY_FAIL_AT");
  const char* bad_at = std::getenv("LLM_FLAKY_BAD_AT");
  const char* bad = std::getenv("LLM_FLAKY_BAD");
  *out = new llm_backend_context{*shape,
                                 device->host,
                                 0,
                                 env ? std::atol(env) : 3,
                                 bad_at ? std::atol(bad_at) : 0,
                                 bad && std::string(bad) == "skip",
                                 {}};
  return LLM_OK;
}

void context_destroy(llm_backend_context* ctx) { delete ctx; }

llm_status run(llm_backend_context* ctx, const llm_attention_args* args, bool decode) {
  if (++ctx->calls == ctx->fail_at) {
    ctx->error = "injected failure on call " + std::to_string(ctx->calls);
    return LLM_ERR_INTERNAL;
  }
  if (std::string problem = mha_cpu::validate(ctx->shape, *args, decode); !problem.empty()) {
    ctx->error = problem;
    return LLM_ERR_INVALID_ARGUMENT;
  }
  if (ctx->calls == ctx->bad_at && ctx->skip) return LLM_OK;  // "success", nothing written
  mha_cpu::attend(ctx->shape, *args, ctx->host);
  if (ctx->calls == ctx->bad_at)
    static_cast<float*>(args->out)[args->out_token_stride * (args->total_q_tokens - 1)] = NAN;
  return LLM_OK;
}

llm_status prefill(llm_backend_context* ctx, const llm_attention_args* args) { return run(ctx, args, false); }
llm_status decode(llm_backend_context* ctx, const llm_attention_args* args) { return run(ctx, args, true); }
const char* last_error(const llm_backend_context* ctx) { return ctx ? ctx->error.c_str() : ""; }

const llm_backend_iface kIface = {sizeof(llm_backend_iface),
                                  LLM_ABI_VERSION_MAJOR,
                                  LLM_ABI_VERSION_MINOR,
                                  "flaky_cpu",
                                  "0.0.1",
                                  LLM_DEVICE_CPU,
                                  100,
                                  probe,
                                  context_create,
                                  context_destroy,
                                  prefill,
                                  decode,
                                  last_error,
                                  0};

}  // namespace

extern "C" LLM_BACKEND_EXPORT const llm_backend_iface* llm_backend_entry(uint32_t) { return &kIface; }
