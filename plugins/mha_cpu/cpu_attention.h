// fp32 attention on the CPU over the SDK's KV-cache view: the computation behind mha_cpu.so, kept apart
// from the plugin entry so that test plugins can serve the very same numbers.
#pragma once

#include <llm/attention_backend.h>

#include <string>

namespace mha_cpu {

// Checks `args` against `shape`; returns "" when they are consistent, else what is wrong.
std::string validate(const llm_attention_shape& shape, const llm_attention_args& args, bool decode);

// Computes the attention `args` describes, spread over the runtime's threads when `host` offers them
// (else on the calling thread). Each (token, head) output is computed by one thread in a fixed order,
// so results do not depend on the thread count.
void attend(const llm_attention_shape& shape, const llm_attention_args& args, const llm_host_services* host);

// True when this CPU runs the AVX2/FMA path (decided once, at run time).
bool uses_avx2();

}  // namespace mha_cpu
