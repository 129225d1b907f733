// Tensor parallelism's arithmetic on the CPU: the shard plan for the shapes we ship (and the ones that do
// not divide), weight shards that reassemble into the full matrices, and whole forward passes split over 2
// and 4 ranks (threads with an in-process all-reduce) that give the unsplit model's logits and greedy text.
#include "tensor_parallel.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <thread>

#include "engine.h"
#include "error.h"
#include "llama_cpu.h"
#include "model_export.h"
#include "plugin_loader.h"
#include "random_checkpoint.h"
#include "test_support.h"
#include "tokenizer.h"

namespace llm {
namespace {

using testing::HasSubstr;

TEST(TensorParallel, PlansForTheShapesWeShipAndNamesWhatDoesNotDivide) {
  const ModelConfig l7 = model_preset("llama2-7b");
  for (int world : {1, 2, 4, 8}) {
    int heads = 0, hidden = 0;
    for (int r = 0; r < world; ++r) {
      const ShardPlan p = shard_plan(l7, world, r);
      EXPECT_EQ(p.q_head0, heads);
      EXPECT_EQ(p.local.head_dim(), l7.head_dim());
      EXPECT_EQ(p.local.dim, p.q_heads * 128);
      EXPECT_EQ(p.hidden0, hidden);
      heads += p.q_heads, hidden += p.hidden;
    }
    EXPECT_EQ(heads, 32);
    EXPECT_EQ(hidden, 11008);
  }
  ModelConfig l70 = l7;  // Llama-2-70B: 80 layers, dim 8192, 64 heads over 8 KV heads, hidden 28672
  l70.dim = 8192, l70.n_heads = 64, l70.n_kv_heads = 8, l70.hidden_dim = 28672, l70.n_layers = 80;
  const ShardPlan p4 = shard_plan(l70, 4, 3);
  EXPECT_EQ(p4.q_heads, 16);
  EXPECT_EQ(p4.kv_heads, 2);
  EXPECT_EQ(p4.kv_head0, 6);
  EXPECT_EQ(p4.local.kv_group(), 8);  // GQA ratio kept on every rank
  EXPECT_EQ(p4.hidden, 7168);
  try {
    shard_plan(l70, 16, 0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("the model's 8 KV heads do not divide among them"));
  }
  EXPECT_THROW(shard_plan(model_preset("tinyllama"), 3, 0), Error);  // 32 heads over 3 ranks
  EXPECT_THROW(shard_plan(l7, 2, 2), Error);                         // no rank 2 of 2
}

// Row r of `m` as fp32.
std::vector<float> row_of(const Matrix& m, int r) {
  std::vector<float> v(static_cast<size_t>(m.cols));
  m.dequantize_row(r, v.data());
  return v;
}

TEST(TensorParallel, ShardsReassembleIntoTheFullMatrices) {
  ModelConfig c = model_preset("stories260K");
  c.hidden_dim = 192;  // whole Q8_0 groups in every column slice at 2 ranks (96 = 3 x 32)
  test::TempDir dir;
  for (auto format : {CheckpointFormat::V1F32, CheckpointFormat::V2Q8}) {
    const std::string path = dir.file("m.bin");
    write_checkpoint(path, c, format, random_weights(c, 3));
    const auto ck = Checkpoint::open(path);
    const LayerWeights& full = ck->weights().layers[1];
    const int hd = c.head_dim();
    for (int world : {2, 4}) {
      std::vector<std::unique_ptr<ShardedWeights>> shards;
      std::vector<ShardPlan> plans;
      for (int r = 0; r < world; ++r) {
        plans.push_back(shard_plan(c, world, r));
        shards.push_back(std::make_unique<ShardedWeights>(ck->weights(), c, plans.back()));
      }
      for (int r = 0; r < world; ++r) {
        const LayerWeights& s = shards[r]->weights().layers[1];
        // column-parallel: rank r's rows are the full matrix's rows of its heads
        for (int i = 0; i < s.wq.rows; ++i) EXPECT_EQ(row_of(s.wq, i), row_of(full.wq, plans[r].q_head0 * hd + i));
        for (int i = 0; i < s.wk.rows; ++i) EXPECT_EQ(row_of(s.wk, i), row_of(full.wk, plans[r].kv_head0 * hd + i));
        for (int i = 0; i < s.w3.rows; ++i) EXPECT_EQ(row_of(s.w3, i), row_of(full.w3, plans[r].hidden0 + i));
        // row-parallel: rank r's columns of every row
        for (int i = 0; i < full.w2.rows; ++i) {
          const auto a = row_of(s.w2, i), b = row_of(full.w2, i);
          EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin() + plans[r].hidden0)) << "w2 row " << i;
        }
        if (format == CheckpointFormat::V2Q8 && world == 2) {
          EXPECT_EQ(s.w2.type, WeightType::Q8_0);
        }
      }
    }
  }
}

// `world` ranks of one model, each a LlamaCpu over its shard with its own chain (mha_cpu over its heads)
// and its own thread, the all-reduce in process.
class TensorParallelGroup {
 public:
  TensorParallelGroup(const Checkpoint& ck, int world, int context)
      : collective_(world), plugins_(load_plugins({LLM_PLUGIN_DIR})) {
    for (int r = 0; r < world; ++r) {
      auto rank = std::make_unique<Rank>();
      rank->plan = shard_plan(ck.config(), world, r);
      rank->shard = std::make_unique<ShardedWeights>(ck.weights(), ck.config(), rank->plan);
      rank->tp = {&rank->plan, &rank->shard->weights(), &collective_};
      auto chain = std::make_unique<BackendChain>(plugins_, std::vector<std::string>{"mha_cpu"}, cpu_device_info(1),
                                                  attention_shape(rank->plan.local, context, 1));
      rank->model = std::make_unique<LlamaCpu>(ck, std::move(chain), rank->pool, 1, context, &rank->tp);
      ranks_.push_back(std::move(rank));
    }
  }
  // Every rank runs the step; returns rank 0's logits after checking that all ranks agree bit for bit.
  std::vector<float> forward(const SequenceChunk& chunk) {
    const int vocab = ranks_[0]->model->config().vocab_size;
    std::vector<std::vector<float>> out(ranks_.size());
    std::vector<std::thread> threads;
    for (size_t r = 0; r < ranks_.size(); ++r)
      threads.emplace_back([&, r] {
        const float* l = ranks_[r]->model->forward({chunk});
        out[r].assign(l, l + vocab);
      });
    for (auto& t : threads) t.join();
    for (size_t r = 1; r < out.size(); ++r) EXPECT_EQ(out[r], out[0]) << "rank " << r << " differs from rank 0";
    return out[0];
  }

 private:
  struct Rank {
    ThreadPool pool{1};
    ShardPlan plan;
    std::unique_ptr<ShardedWeights> shard;
    TensorParallelRank tp;
    std::unique_ptr<LlamaCpu> model;
  };
  ThreadCollective collective_;
  std::vector<PluginCandidate> plugins_;
  std::vector<std::unique_ptr<Rank>> ranks_;
};

TEST(TensorParallel, SplitForwardPassesGiveTheUnsplitLogitsAndText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  LLM_REQUIRE_MODEL(tok, "tok512.bin");
  const auto ck = Checkpoint::open(model);
  const int context = 128, steps = 80;
  // the unsplit model, one thread
  ThreadPool pool(1);
  const auto plugins = load_plugins({LLM_PLUGIN_DIR});
  LlamaCpu full(*ck,
                std::make_unique<BackendChain>(plugins, std::vector<std::string>{"mha_cpu"}, cpu_device_info(1),
                                               attention_shape(ck->config(), context, 1)),
                pool, 1, context);
  for (int world : {1, 2, 4}) {  // stories260K: 8 heads over 4 KV heads, hidden 172
    TensorParallelGroup group(*ck, world, context);
    std::vector<int> tokens = load_tokenizer(tok)->encode("Once upon a time", true);
    double worst = 0;
    int differ = 0;
    for (int s = 0; s < steps; ++s) {
      const int start = s == 0 ? 0 : static_cast<int>(tokens.size()) - 1;
      const SequenceChunk chunk{0, start, std::vector<int>(tokens.begin() + start, tokens.end())};
      const float* lf = full.forward({chunk});
      const std::vector<float> ref(lf, lf + ck->config().vocab_size);
      const std::vector<float> got = group.forward(chunk);
      double e = 0, n = 0;
      for (size_t i = 0; i < ref.size(); ++i)
        e += (got[i] - ref[i]) * double(got[i] - ref[i]), n += ref[i] * double(ref[i]);
      worst = std::max(worst, std::sqrt(e / n));
      const int a = static_cast<int>(std::max_element(ref.begin(), ref.end()) - ref.begin());
      differ += a != static_cast<int>(std::max_element(got.begin(), got.end()) - got.begin());
      tokens.push_back(a);
    }
    std::printf(
        "tensor parallel over %d rank(s): max relative L2 logit error %.3g over %d steps, argmax differs "
        "at %d\n",
        world, worst, steps, differ);
    EXPECT_LT(worst, 1e-5) << world;  // the same fp32 arithmetic, summed in another order
    EXPECT_EQ(differ, 0) << world;
  }
}

}  // namespace
}  // namespace llm

namespace llm {
namespace {

// stories260K on mha_cpu, split over `world` ranks (CPU threads).
RunConfig ranks_config(const std::string& model, int world) {
  RunConfig c = test::cpu_config(model, test::model_path("tok512.bin"));
  c.tensor_parallel = world;
  return c;
}

// Through the engine (parallel.tensor): 2 and 4 ranks tell the 1-rank story, batched too.
TEST(TensorParallel, EngineWithRanksGivesTheSameText) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  auto config = [&](int world) { return ranks_config(model, world); };
  GenerationOptions o;
  o.max_tokens = 120;
  o.stop_at_eos = false;
  const auto ref = Engine(config(1)).generate("Once upon a time", o);
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Lily and Ben"};
  const auto ref_batch = Engine(config(1), 3).generate_batch(prompts, o);
  for (int world : {2, 4}) {
    EXPECT_EQ(Engine(config(world)).generate("Once upon a time", o).tokens, ref.tokens) << world;
    const auto batch = Engine(config(world), 3).generate_batch(prompts, o);
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(batch[i].tokens, ref_batch[i].tokens) << world << " " << i;
  }
}

// A backend failing on every rank with nothing after it: the step ends with that backend's error (no rank
// left waiting), the next call fails with a clear error too rather than hanging, and the model shuts its
// rank threads down cleanly.
TEST(TensorParallel, AFailingRankEndsTheStepWithItsError) {
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  RunConfig c = ranks_config(model, 2);
  c.fail_backend = {"mha_cpu@12"};  // layer 2 of the second decode step, on every rank
  GenerationOptions o;
  o.max_tokens = 20;
  auto engine = std::make_unique<Engine>(c);
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      engine->generate("Once upon a time", o);
      ADD_FAILURE() << "attempt " << attempt << ": expected an error";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("mha_cpu")) << attempt;  // then: every backend of the chain has failed
    }
  }
  engine.reset();
}

// A rank that fails releases the ranks waiting for it in the all-reduce: they throw instead of hanging.
TEST(TensorParallel, AnAbortedCollectiveReleasesTheWaitingRanks) {
  ThreadCollective c(2);
  std::string error;
  std::thread waiting([&] {
    std::vector<float> x(4, 1.0f);
    try {
      c.all_reduce_sum(1, x.data(), x.size());
    } catch (const Error& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  c.abort();
  waiting.join();
  EXPECT_THAT(error, HasSubstr("another rank failed"));
  std::vector<float> y(4, 1.0f);
  EXPECT_THROW(c.all_reduce_sum(0, y.data(), y.size()), Error);  // and it stays aborted
}

}  // namespace
}  // namespace llm
