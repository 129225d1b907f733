/*
 * llm attention-backend SDK: the contract between the llm runtime and an attention plugin.
 *
 * Plain C (C99 and C++17), fixed-width types, no exceptions or STL across the boundary. A plugin is a
 * shared library that exports one symbol, LLM_BACKEND_ENTRY_SYMBOL, with the signature of
 * llm_backend_entry_fn. Everything else is reached through the function table it returns.
 *
 * Versioning. LLM_ABI_VERSION_MAJOR changes only when an existing member changes meaning or place; the
 * runtime loads a plugin only when the majors are equal. LLM_ABI_VERSION_MINOR grows when members are
 * appended to a struct. Every struct that crosses the boundary starts with `struct_size` (sizeof as the
 * writer compiled it), so a reader never touches a member the writer did not know: members are only ever
 * appended, never inserted, removed or reordered.
 *
 * Minor versions meet as follows. A plugin built against an older minor loads in a newer runtime: the
 * runtime reads only the members within the plugin's struct_size and treats the rest as absent. A plugin
 * built against a newer minor loads in an older runtime when the runtime holds everything the plugin
 * needs, which the plugin states in llm_backend_iface.min_runtime_minor (since 1.1); otherwise the runtime
 * rejects it naming both versions.
 *
 * History: 1.0 first release. 1.1 appended llm_backend_iface.min_runtime_minor. 1.2 appended
 * llm_attention_args.overlap (LLM_OVERLAP_*).
 *
 * Ownership. The runtime owns every pointer it passes in (device info, shapes, tensors, the KV cache);
 * a plugin must not keep them past the call that received them. A plugin owns its context and the
 * strings it returns (name, version, error messages), which stay valid until the context is destroyed
 * (context strings) or the library is unloaded (table strings).
 */
#ifndef LLM_ATTENTION_BACKEND_H
#define LLM_ATTENTION_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLM_ABI_VERSION_MAJOR 1
#define LLM_ABI_VERSION_MINOR 2

/* The one symbol every plugin exports (see llm_backend_entry_fn). */
#define LLM_BACKEND_ENTRY_SYMBOL "llm_backend_entry"

#if defined(_WIN32)
#define LLM_BACKEND_EXPORT __declspec(dllexport)
#else
#define LLM_BACKEND_EXPORT __attribute__((visibility("default")))
#endif

/* Status codes returned by every fallible call. LLM_OK is 0; everything else is a failure whose
 * message the plugin makes available through llm_backend_iface.last_error. */
typedef enum llm_status {
  LLM_OK = 0,
  LLM_ERR_UNSUPPORTED = 1,      /* the call's shape, dtype or layout is not served by this backend */
  LLM_ERR_INVALID_ARGUMENT = 2, /* a malformed argument (NULL pointer, negative length, bad stride) */
  LLM_ERR_OUT_OF_MEMORY = 3,    /* the backend could not get the memory it needs */
  LLM_ERR_DEVICE = 4,           /* the device reported an error (a failed kernel launch, a lost GPU) */
  LLM_ERR_INTERNAL = 5          /* anything else; the message says what */
} llm_status;

/* Where data lives and where a backend computes. */
typedef enum llm_device_kind { LLM_DEVICE_CPU = 0, LLM_DEVICE_CUDA = 1 } llm_device_kind;

/* Element types of queries, outputs and the KV cache. */
typedef enum llm_dtype { LLM_DTYPE_F32 = 0, LLM_DTYPE_F16 = 1, LLM_DTYPE_BF16 = 2 } llm_dtype;

/* How the KV cache is laid out (see llm_kv_cache_view). */
typedef enum llm_kv_layout {
  LLM_KV_LAYOUT_CONTIGUOUS = 0, /* one slab of max_context positions per sequence slot */
  LLM_KV_LAYOUT_PAGED = 1       /* fixed-size blocks, found through a per-sequence block table */
} llm_kv_layout;

/* Capability flags a backend reports from probe. */
#define LLM_CAP_PREFILL (1ull << 0)         /* serves llm_backend_iface.prefill */
#define LLM_CAP_DECODE (1ull << 1)          /* serves llm_backend_iface.decode */
#define LLM_CAP_CUDA_GRAPH_SAFE (1ull << 2) /* no host sync or allocation inside calls: capturable */
#define LLM_CAP_PAGED_KV (1ull << 3)        /* reads LLM_KV_LAYOUT_PAGED caches */
#define LLM_CAP_DETERMINISTIC (1ull << 4)   /* same inputs give bitwise the same outputs */

/* A task for llm_host_services.parallel_for: processes items [begin, end). */
typedef void (*llm_parallel_task)(void *arg, int64_t begin, int64_t end);

/* Services the runtime offers CPU backends: its own worker threads, so that a plugin does not start a
 * second pool that would fight the runtime's for the same cores. since ABI 1.0 */
typedef struct llm_host_services {
  uint32_t struct_size;
  int32_t num_threads; /* threads parallel_for runs on, the caller included */
  void *host;          /* pass back as the first argument */
  /* Runs task over [0, n) in chunks spread over the runtime's threads, the calling thread included;
   * returns when every chunk is done. Not reentrant: call it only from the thread the runtime called
   * the plugin on, never from inside a task. */
  void (*parallel_for)(void *host, int64_t n, llm_parallel_task task, void *arg);
} llm_host_services;

/* The device the runtime would run attention on. Filled by the runtime. since ABI 1.0 */
typedef struct llm_device_info {
  uint32_t struct_size;
  int32_t kind;          /* llm_device_kind */
  int32_t index;         /* CUDA ordinal; 0 for the CPU */
  int32_t compute_major; /* CUDA compute capability (e.g. 9 and 0 for sm_90); 0 for the CPU */
  int32_t compute_minor;
  int32_t num_threads;         /* CPU threads the backend may use (>= 1) */
  uint64_t total_memory_bytes; /* device memory (CUDA) or physical memory (CPU) */
  uint64_t free_memory_bytes;
  const char *name; /* human-readable device name; never NULL */
  /* (optional) the runtime's CPU threads, valid until the context is destroyed; NULL: none offered,
   * the backend runs on the calling thread or its own. */
  const llm_host_services *host;
} llm_device_info;

/* The model's attention shape, fixed for a session. Filled by the runtime. since ABI 1.0 */
typedef struct llm_attention_shape {
  uint32_t struct_size;
  int32_t head_dim;      /* elements per head */
  int32_t num_q_heads;   /* query heads; a multiple of num_kv_heads (grouped-query attention) */
  int32_t num_kv_heads;  /* key/value heads */
  int32_t dtype;         /* llm_dtype of queries, outputs and the KV cache */
  int32_t max_context;   /* the most positions one sequence can hold */
  int32_t max_batch;     /* the most sequences in one call */
  int32_t kv_layout;     /* llm_kv_layout of the cache the runtime will pass */
  int32_t kv_block_size; /* positions per block when kv_layout is PAGED; else 0 */
} llm_attention_shape;

/* A probe's verdict. The runtime zeroes it and sets struct_size; the plugin fills the rest. */
typedef struct llm_probe_result {
  uint32_t struct_size;
  int32_t supported;     /* nonzero: the backend serves this device and shape */
  uint64_t capabilities; /* LLM_CAP_* flags */
  char reason[256];      /* when not supported: why, in one human-readable line (NUL-terminated) */
} llm_probe_result;

/*
 * The KV cache of one layer, as the runtime laid it out. Backends only read it: the runtime writes the
 * new tokens' keys and values (after RoPE) before it calls prefill or decode.
 *
 * Strides are in elements of `dtype`. The element (sequence i of the call, position p, kv head h,
 * component d) of K lives at
 *   CONTIGUOUS: k + seq_slot[i] * seq_stride + p * token_stride + h * head_stride + d
 *   PAGED:      k + block_table[seq_slot[i] * max_blocks_per_seq + p / block_size] * block_stride
 *                 + (p % block_size) * token_stride + h * head_stride + d
 * and likewise for V. seq_slot comes from llm_attention_args. since ABI 1.0
 */
typedef struct llm_kv_cache_view {
  uint32_t struct_size;
  int32_t layout;      /* llm_kv_layout */
  int32_t dtype;       /* llm_dtype */
  int32_t device_kind; /* llm_device_kind of the memory below */
  const void *k;
  const void *v;
  int64_t seq_stride;   /* CONTIGUOUS: elements between sequence slots */
  int64_t token_stride; /* elements between positions */
  int64_t head_stride;  /* elements between kv heads */
  /* PAGED only (zero / NULL otherwise): */
  int32_t block_size;         /* positions per block */
  int32_t max_blocks_per_seq; /* row length of block_table */
  int64_t block_stride;       /* elements between blocks */
  const int32_t *block_table; /* [slots][max_blocks_per_seq] block ids, same memory as k and v */
} llm_kv_cache_view;

/* Offset in elements from view->k (or ->v) of (cache slot, position, kv head, component 0), for either
 * layout. A helper for plugins, so every backend addresses the cache the same way. */
static inline int64_t llm_kv_offset(const llm_kv_cache_view *view, int32_t slot, int32_t pos, int32_t kv_head) {
  if (view->layout == LLM_KV_LAYOUT_PAGED) {
    int32_t block = view->block_table[(int64_t)slot * view->max_blocks_per_seq + pos / view->block_size];
    return (int64_t)block * view->block_stride + (int64_t)(pos % view->block_size) * view->token_stride +
           (int64_t)kv_head * view->head_stride;
  }
  return (int64_t)slot * view->seq_stride + (int64_t)pos * view->token_stride + (int64_t)kv_head * view->head_stride;
}

/*
 * One attention call over a batch of sequences of different lengths, queries packed token-major.
 * Sequence i owns query tokens [q_start[i], q_start[i+1]), which sit at the *last* positions of its
 * context: query j of sequence i is at position kv_len[i] - (q_start[i+1] - q_start[i]) + j. With
 * `causal`, a query at position p attends to positions 0..p; without, to 0..kv_len[i]-1.
 * Grouped-query attention: query head hq reads kv head hq / (num_q_heads / num_kv_heads).
 *
 * The arrays q_start, kv_len and seq_slot live in the same memory as q (device memory for CUDA), so
 * a graph-captured call reads fresh values on replay. max_q_len and max_kv_len are host-side upper
 * bounds for sizing launches; a graph-captured call passes the session maxima. since ABI 1.0
 */
typedef struct llm_attention_args {
  uint32_t struct_size;
  int32_t layer;          /* model layer index, for messages */
  int32_t num_seqs;       /* sequences in this call (>= 1) */
  int32_t total_q_tokens; /* q_start[num_seqs] */
  int32_t max_q_len;      /* upper bound of any sequence's query count (1 for decode) */
  int32_t max_kv_len;     /* upper bound of any kv_len[i] */
  int32_t causal;         /* nonzero: causal mask */
  float softmax_scale;    /* usually 1/sqrt(head_dim) */
  int32_t dtype;          /* llm_dtype of q and out */
  const void *q;          /* [total_q_tokens][num_q_heads][head_dim] with the strides below */
  int64_t q_token_stride; /* elements between query tokens */
  int64_t q_head_stride;  /* elements between query heads */
  void *out;              /* same shape as q; every element is written */
  int64_t out_token_stride;
  int64_t out_head_stride;
  const int32_t *q_start;  /* [num_seqs + 1], q_start[0] == 0 */
  const int32_t *kv_len;   /* [num_seqs] context length including this call's queries */
  const int32_t *seq_slot; /* [num_seqs] cache slot (CONTIGUOUS) or block-table row (PAGED) */
  const llm_kv_cache_view *kv;
  void *stream; /* cudaStream_t to enqueue on (CUDA); NULL for the CPU */
  /* since ABI 1.2: how the call may overlap the work around it on `stream` (LLM_OVERLAP_* bits). Absent
   * (an older runtime) or 0: plain stream order. A backend may ignore any bit. */
  uint32_t overlap;
} llm_attention_args;

/*
 * LLM_OVERLAP_EARLY_START: the call's kernels may start before the stream's previous kernel has finished
 * (programmatic dependent launch, compute capability 9.0+) and, until they wait for it
 * (griddepcontrol.wait), read q_start, kv_len, seq_slot and each sequence's cache entries before its first
 * query of this call: no work still running or pending on the stream writes them. Anything else (q, the
 * new entries, out) only after the wait.
 * LLM_OVERLAP_EARLY_NEXT: the call's kernels may let the stream's next kernel start before they finish
 * (griddepcontrol.launch_dependents): that kernel waits for them before it reads out.
 * The runtime sets them where it measured them to pay; they never change the results.
 */
#define LLM_OVERLAP_EARLY_START 1u
#define LLM_OVERLAP_EARLY_NEXT 2u

/* A plugin's per-session state, opaque to the runtime. */
typedef struct llm_backend_context llm_backend_context;

/*
 * The function table a plugin returns. Static storage in the plugin; the runtime never writes it.
 * Threading: the runtime makes calls on one context from one thread at a time; probe may run
 * concurrently with anything.
 */
typedef struct llm_backend_iface {
  uint32_t struct_size; /* sizeof(llm_backend_iface) as the plugin compiled it */
  uint32_t abi_major;   /* LLM_ABI_VERSION_MAJOR the plugin was built against */
  uint32_t abi_minor;   /* LLM_ABI_VERSION_MINOR the plugin was built against */

  const char *name;    /* unique backend name, [a-z0-9_]+, e.g. "mha_cpu" */
  const char *version; /* the plugin's own version, e.g. "1.2.0" */
  int32_t device_kind; /* llm_device_kind it computes on and whose memory it reads */
  int32_t priority;    /* higher is preferred when the config names no order */

  /* Says whether the backend serves `shape` on `device`. Must not crash or allocate device memory;
   * fills `result` (reason when not supported, capabilities when supported). Returns LLM_OK when it
   * reached a verdict, either way. The runtime runs it first in a forked child process with a time
   * limit (a crash or hang there rejects the plugin), then in its own: decide from `device` and
   * `shape` alone, without initialising a device runtime (CUDA cannot be used in a forked child). */
  llm_status (*probe)(const llm_device_info *device, const llm_attention_shape *shape, llm_probe_result *result);

  /* Creates per-session state for a probed (device, shape). On failure *out stays NULL and
   * last_error(NULL) says why. */
  llm_status (*context_create)(const llm_device_info *device, const llm_attention_shape *shape,
                               llm_backend_context **out);

  /* Releases everything context_create and later calls acquired. NULL is allowed. */
  void (*context_destroy)(llm_backend_context *ctx);

  /* Attention for many query tokens per sequence (prompt prefill, chunked prefill). */
  llm_status (*prefill)(llm_backend_context *ctx, const llm_attention_args *args);

  /* Attention for exactly one query token per sequence (q_start[i] == i). */
  llm_status (*decode)(llm_backend_context *ctx, const llm_attention_args *args);

  /* The message of the last failed call on `ctx` in this thread, or of the last failed
   * context_create when `ctx` is NULL. Never NULL; "" when there was no failure. */
  const char *(*last_error)(const llm_backend_context *ctx);

  /* since ABI 1.1: the oldest runtime ABI minor (of this major) whose structs and calls hold everything
   * this plugin uses; an older runtime rejects the plugin. 0: any 1.x runtime. */
  uint32_t min_runtime_minor;
} llm_backend_iface;

/*
 * The exported entry point: returns the plugin's function table for ABI major `abi_major`, or a table
 * of the plugin's own major when it does not speak that one (the runtime then rejects it naming both
 * versions), or NULL when it cannot say. Must be cheap and side-effect free.
 */
typedef const llm_backend_iface *(*llm_backend_entry_fn)(uint32_t abi_major);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LLM_ATTENTION_BACKEND_H */
