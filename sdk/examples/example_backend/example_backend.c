/*
 * example_cpu: a complete attention backend written against the SDK header alone, in plain C99. It is
 * the walk-through of docs/PLUGIN_GUIDE.md: fp32 attention on the CPU, prefill (causal or not, after a
 * cached prefix) and decode, grouped-query attention, contiguous and paged KV caches, one thread.
 * Small and clear rather than fast: a template to start a backend from.
 *
 * Build it against an installed SDK:  cmake -S sdk/examples/example_backend -B build-example
 *                                       -DCMAKE_PREFIX_PATH=<install prefix> && cmake --build build-example
 * then put example_cpu.so into a plugin directory and run `llm-runner --backends example_cpu`.
 */
#include <llm/attention_backend.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The tests build this file under other names and against older and newer SDK headers. */
#ifndef EXAMPLE_BACKEND_NAME
#define EXAMPLE_BACKEND_NAME "example_cpu"
#endif
#ifndef EXAMPLE_MIN_RUNTIME_MINOR
#define EXAMPLE_MIN_RUNTIME_MINOR 0
#endif

/* Per-session state: the shape, a scratch row of scores, and the last error message. */
struct llm_backend_context {
  llm_attention_shape shape;
  float *scores; /* [max_context] */
  char error[256];
};

/* The message of a failed context_create (no context exists to hold it). */
static char g_create_error[320]; /* "context_create: " and a probe reason */

static llm_status example_probe(const llm_device_info *device, const llm_attention_shape *shape,
                                llm_probe_result *result) {
  const char *why = NULL;
  if (!device || !shape || !result) return LLM_ERR_INVALID_ARGUMENT;
  if (device->kind != LLM_DEVICE_CPU)
    why = EXAMPLE_BACKEND_NAME " computes on the CPU";
  else if (shape->dtype != LLM_DTYPE_F32)
    why = EXAMPLE_BACKEND_NAME " serves fp32 only";
  else if (shape->head_dim < 1 || shape->num_kv_heads < 1 || shape->num_q_heads % shape->num_kv_heads != 0)
    why = "num_q_heads must be a positive multiple of num_kv_heads";
  result->supported = why == NULL;
  result->capabilities = why ? 0 : LLM_CAP_PREFILL | LLM_CAP_DECODE | LLM_CAP_PAGED_KV | LLM_CAP_DETERMINISTIC;
  if (why) snprintf(result->reason, sizeof result->reason, "%s", why);
  return LLM_OK;
}

static llm_status example_create(const llm_device_info *device, const llm_attention_shape *shape,
                                 llm_backend_context **out) {
  llm_probe_result verdict;
  llm_backend_context *ctx;
  if (!out) return LLM_ERR_INVALID_ARGUMENT;
  *out = NULL;
  memset(&verdict, 0, sizeof verdict);
  verdict.struct_size = sizeof verdict;
  if (example_probe(device, shape, &verdict) != LLM_OK || !verdict.supported) {
    snprintf(g_create_error, sizeof g_create_error, "context_create: %s", verdict.reason);
    return LLM_ERR_UNSUPPORTED;
  }
  ctx = (llm_backend_context *)calloc(1, sizeof *ctx);
  if (ctx) ctx->scores = (float *)malloc(sizeof(float) * (size_t)(shape->max_context > 0 ? shape->max_context : 1));
  if (!ctx || !ctx->scores) {
    if (ctx) free(ctx);
    snprintf(g_create_error, sizeof g_create_error, "context_create: out of memory");
    return LLM_ERR_OUT_OF_MEMORY;
  }
  ctx->shape = *shape;
  *out = ctx;
  return LLM_OK;
}

static void example_destroy(llm_backend_context *ctx) {
  if (!ctx) return;
  free(ctx->scores);
  free(ctx);
}

/* Softmax-weighted sum of V for one query row: out = sum_p softmax(scale * q.k_p) v_p over positions
 * [0, n). Scores are computed once, the maximum subtracted before exp (no overflow), then normalised. */
static void attend_row(llm_backend_context *ctx, const llm_kv_cache_view *kv, int slot, int kv_head, const float *q,
                       int n, float scale, float *out) {
  const int d = ctx->shape.head_dim;
  const float *K = (const float *)kv->k, *V = (const float *)kv->v;
  float max = -INFINITY, sum = 0.0f;
  int p, i;
  for (p = 0; p < n; ++p) {
    const float *k = K + llm_kv_offset(kv, slot, p, kv_head);
    float s = 0.0f;
    for (i = 0; i < d; ++i) s += q[i] * k[i];
    ctx->scores[p] = s * scale;
    if (ctx->scores[p] > max) max = ctx->scores[p];
  }
  for (i = 0; i < d; ++i) out[i] = 0.0f;
  for (p = 0; p < n; ++p) {
    const float *v = V + llm_kv_offset(kv, slot, p, kv_head);
    const float w = expf(ctx->scores[p] - max);
    sum += w;
    for (i = 0; i < d; ++i) out[i] += w * v[i];
  }
  for (i = 0; i < d; ++i) out[i] = n > 0 ? out[i] / sum : 0.0f;
}

/* Prefill and decode are the same loop: decode is prefill with one query per sequence. */
static llm_status example_run(llm_backend_context *ctx, const llm_attention_args *a) {
  int group, s, j, h;
  if (!ctx) return LLM_ERR_INVALID_ARGUMENT;
  group = ctx->shape.num_q_heads / ctx->shape.num_kv_heads;
  if (!a || !a->kv || !a->q || !a->out || a->dtype != LLM_DTYPE_F32 || a->kv->dtype != LLM_DTYPE_F32) {
    snprintf(ctx->error, sizeof ctx->error, "layer %d: NULL tensors or a dtype other than fp32", a ? a->layer : -1);
    return LLM_ERR_INVALID_ARGUMENT;
  }
  for (s = 0; s < a->num_seqs; ++s) {
    const int q0 = a->q_start[s], q_len = a->q_start[s + 1] - q0, kv_len = a->kv_len[s];
    if (kv_len > ctx->shape.max_context || q_len > kv_len) {
      snprintf(ctx->error, sizeof ctx->error, "layer %d: sequence %d has %d queries over %d positions (context %d)",
               a->layer, s, q_len, kv_len, ctx->shape.max_context);
      return LLM_ERR_INVALID_ARGUMENT;
    }
    for (j = 0; j < q_len; ++j) {
      const int pos = kv_len - q_len + j; /* queries sit at the last positions of the context */
      const int visible = a->causal ? pos + 1 : kv_len;
      for (h = 0; h < ctx->shape.num_q_heads; ++h) {
        const float *q = (const float *)a->q + (int64_t)(q0 + j) * a->q_token_stride + (int64_t)h * a->q_head_stride;
        float *out = (float *)a->out + (int64_t)(q0 + j) * a->out_token_stride + (int64_t)h * a->out_head_stride;
        attend_row(ctx, a->kv, a->seq_slot[s], h / group, q, visible, a->softmax_scale, out);
      }
    }
  }
  return LLM_OK;
}

static const char *example_last_error(const llm_backend_context *ctx) { return ctx ? ctx->error : g_create_error; }

static const llm_backend_iface example_iface = {
    sizeof(llm_backend_iface),
    LLM_ABI_VERSION_MAJOR,
    LLM_ABI_VERSION_MINOR,
    EXAMPLE_BACKEND_NAME,
    "1.0.0",
    LLM_DEVICE_CPU,
    1, /* priority: below the project's own backends */
    example_probe,
    example_create,
    example_destroy,
    example_run, /* prefill */
    example_run, /* decode */
    example_last_error,
#if LLM_ABI_VERSION_MINOR >= 1
    EXAMPLE_MIN_RUNTIME_MINOR, /* min_runtime_minor: this file needs nothing newer than ABI 1.0 */
#endif
#if LLM_ABI_VERSION_MINOR >= 3                      /* (tests/abi/future's made-up member) */
    "built against a newer SDK than the runtime's", /* a member only newer runtimes read */
#endif
};

LLM_BACKEND_EXPORT const llm_backend_iface *llm_backend_entry(uint32_t abi_major) {
  (void)abi_major; /* one major only: the runtime compares and names both when they differ */
  return &example_iface;
}
