// missing_dep.so: a plugin whose library dependency cannot be found (as when a third-party plugin was built
// against a library the user lacks); the loader must reject it naming that library.
#include <llm/attention_backend.h>

extern "C" int vanishing_dep_value();

extern "C" LLM_BACKEND_EXPORT const llm_backend_iface* llm_backend_entry(uint32_t) {
  return vanishing_dep_value() == 7 ? nullptr : nullptr;
}
