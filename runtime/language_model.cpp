#include "language_model.h"

#include "sampler.h"

namespace llm {

void LanguageModel::forward_argmax(const std::vector<SequenceChunk>& chunks, int* ids) {
  const float* logits = forward(chunks);
  const int vocab = config().vocab_size;
  for (size_t i = 0; i < chunks.size(); ++i) ids[i] = argmax(logits + i * vocab, vocab);
}

}  // namespace llm
