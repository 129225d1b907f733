// bad_probe.so: a plugin whose probe crashes (LLM_TEST_BAD_PROBE=crash) or hangs (=hang); otherwise it
// declines politely. The runner must reject it naming the signal or the timeout, and live on.
#include <llm/attention_backend.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>

namespace {

llm_status probe(const llm_device_info*, const llm_attention_shape*, llm_probe_result* result) {
  const char* mode = std::getenv("LLM_TEST_BAD_PROBE");
  if (mode && std::strcmp(mode, "crash") == 0) std::raise(SIGSEGV);
  if (mode && std::strcmp(mode, "hang") == 0)
    for (;;) ::pause();
  result->supported = 0;
  std::strncpy(result->reason, "bad_probe declines unless told to misbehave", sizeof(result->reason) - 1);
  return LLM_OK;
}
llm_status create(const llm_device_info*, const llm_attention_shape*, llm_backend_context**) {
  return LLM_ERR_UNSUPPORTED;
}
void destroy(llm_backend_context*) {}
llm_status run(llm_backend_context*, const llm_attention_args*) { return LLM_ERR_UNSUPPORTED; }
const char* last_error(const llm_backend_context*) { return "bad_probe never runs"; }

const llm_backend_iface kIface = {sizeof(llm_backend_iface),
                                  LLM_ABI_VERSION_MAJOR,
                                  LLM_ABI_VERSION_MINOR,
                                  "bad_probe",
                                  "0.0.1",
                                  LLM_DEVICE_CPU,
                                  0,
                                  probe,
                                  create,
                                  destroy,
                                  run,
                                  run,
                                  last_error,
                                  0};

}  // namespace

extern "C" LLM_BACKEND_EXPORT const llm_backend_iface* llm_backend_entry(uint32_t) { return &kIface; }
