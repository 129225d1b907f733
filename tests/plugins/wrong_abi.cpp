// wrong_abi.so: a plugin built for a future ABI major; the loader must reject it naming both versions.
#include <llm/attention_backend.h>

namespace {
const llm_backend_iface kIface = {sizeof(llm_backend_iface),
                                  LLM_ABI_VERSION_MAJOR + 1,
                                  0,
                                  "wrong_abi",
                                  "9.9.9",
                                  LLM_DEVICE_CPU,
                                  0,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  0};
}

extern "C" LLM_BACKEND_EXPORT const llm_backend_iface* llm_backend_entry(uint32_t) { return &kIface; }
