/* The SDK header must compile as plain C99 with every warning on: a third party needs nothing else. */
#include <llm/attention_backend.h>

static llm_status probe(const llm_device_info *device, const llm_attention_shape *shape, llm_probe_result *result) {
  (void)device;
  (void)shape;
  result->supported = 0;
  return LLM_OK;
}

const llm_backend_iface c99_table = {sizeof(llm_backend_iface),
                                     LLM_ABI_VERSION_MAJOR,
                                     LLM_ABI_VERSION_MINOR,
                                     "c99",
                                     "0",
                                     LLM_DEVICE_CPU,
                                     0,
                                     probe,
                                     NULL,
                                     NULL,
                                     NULL,
                                     NULL,
                                     NULL,
                                     0};

int64_t c99_offset(const llm_kv_cache_view *view) { return llm_kv_offset(view, 1, 2, 3); }
