// Tensor parallelism on GPUs (a rank per GPU, NCCL): the split model gives the one-GPU logits and text.
// A group of one rank runs wherever one GPU does; groups of 2 and 4 skip, saying so, with fewer GPUs.
#include <cuda_runtime.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <random>

#include "cuda_check.h"
#include "cuda_test_support.h"
#include "engine.h"
#include "error.h"
#include "llama_cuda.h"
#include "model_export.h"
#include "nccl_group.h"
#include "tensor_parallel.h"
#include "test_support.h"

namespace llm {
namespace {

using ::testing::HasSubstr;

int gpu_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  cudaGetLastError();
  return n;
}

#define LLM_REQUIRE_GPUS(n)                                                                           \
  do {                                                                                                \
    LLM_REQUIRE_GPU();                                                                                \
    if (!::llm::cuda::have_nccl()) GTEST_SKIP() << "this build has no NCCL";                          \
    if (gpu_count() < (n)) GTEST_SKIP() << "needs " << (n) << " GPUs, " << gpu_count() << " present"; \
  } while (0)

RunConfig gpu_config(const std::string& model, const std::string& dtype, int world) {
  RunConfig c;
  c.model = model;
  c.tokenizer = test::model_path("tok512.bin");
  c.device = "cuda";
  c.dtype = dtype;
  c.plugin_dirs = {LLM_PLUGIN_DIR};
  c.backend_order = {"flash_cuda", "mha_cuda"};
  c.tensor_parallel = world;
  return c;
}

GenerationOptions greedy(int tokens) {
  GenerationOptions o;
  o.max_tokens = tokens;
  o.stop_at_eos = false;
  return o;
}

// A group of one rank goes through every step of the split path (sharded weights, the NCCL all-reduce
// inside the decode graph) and must give the ungrouped model's logits and text.
TEST(TensorParallelCuda, AGroupOfOneGivesTheUngroupedModel) {
  LLM_REQUIRE_GPUS(1);
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (const char* dtype : {"fp32", "bf16"}) {
    RunConfig rc = gpu_config(model, dtype, 1);
    rc.backend_order = {"mha_cuda"};  // the backend the grouped model's chain has
    Engine ref(rc);
    const Checkpoint& ck = ref.checkpoint();
    const ModelConfig& mc = ck.config();
    const ShardPlan plan = shard_plan(mc, 1, 0);
    const ShardedWeights shard(ck.weights(), mc, plan);
    cuda::NcclGroup group({0});
    const cuda::CudaRank rank{&plan, &shard.weights(), &group.rank(0)};
    const cuda::DeviceStatus gpu = cuda::probe_device(0);
    DType dt = DType::F32;
    parse_dtype(dtype, dt);
    llm_attention_shape shape = attention_shape(mc, mc.max_seq_len, 1);
    shape.dtype = sdk_dtype(dt);
    auto chain = std::make_unique<BackendChain>(ref.plugins(), std::vector<std::string>{"mha_cuda"},
                                                cuda::device_info(gpu), shape);
    cuda::LlamaCuda grouped(ck, std::move(chain), gpu, dt, 1, mc.max_seq_len, &rank);

    const auto a = ref.generate("Once upon a time", greedy(100));
    const auto b = generate(grouped, ref.tokenizer(), "Once upon a time", greedy(100));
    EXPECT_EQ(b.tokens, a.tokens) << dtype;
    EXPECT_GT(grouped.graph_replays(), 50) << "decode steps with the all-reduce were replayed from a graph";
    // Logits of a fresh prefill: the same products, an all-reduce of one is a copy.
    const std::vector<int> prompt = ref.tokenizer().encode("Once upon a time", true);
    const float* la = ref.model().forward({SequenceChunk{0, 0, prompt}});
    const std::vector<float> ra(la, la + mc.vocab_size);
    const float* lb = grouped.forward({SequenceChunk{0, 0, prompt}});
    for (int i = 0; i < mc.vocab_size; ++i) ASSERT_EQ(lb[i], ra[i]) << dtype << " logit " << i;
  }
}

// 2 (and 4, where present) GPUs give the one-GPU text on stories260K, and its logits along the greedy
// path: near-exact in fp32 (the same arithmetic, summed in another order), within the bf16 bound in bf16.
TEST(TensorParallelCuda, RanksOnSeveralGpusGiveTheOneGpuTextAndLogits) {
  LLM_REQUIRE_GPUS(2);
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  for (const char* dtype : {"fp32", "bf16"}) {
    Engine one(gpu_config(model, dtype, 1));
    const auto ref = one.generate("Once upon a time", greedy(120));
    for (int world : {2, 4}) {
      if (world > gpu_count()) continue;
      Engine split(gpu_config(model, dtype, world));
      EXPECT_EQ(split.device(), "cuda");
      const auto text = split.generate("Once upon a time", greedy(120));
      EXPECT_EQ(text.tokens, ref.tokens) << dtype << " " << world << " ranks";
      const test::PathComparison c = test::compare_along_path(split, one, 60);
      std::printf("%s, %d GPUs: max relative L2 logit error %.3g over 60 steps, argmax differs at %d\n", dtype, world,
                  c.max_rel_err, c.argmax_differs);
      EXPECT_LT(c.max_rel_err, std::string(dtype) == "fp32" ? 1e-5 : 1e-2) << dtype << " " << world;
      EXPECT_EQ(c.unexplained, 0) << dtype << " " << world;
    }
  }
}

// Batched generation on 2 GPUs: each prompt's own one-GPU text, kept apart and in order.
TEST(TensorParallelCuda, BatchedGenerationOnTwoGpusMatchesOneGpu) {
  LLM_REQUIRE_GPUS(2);
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Lily and Ben"};
  const auto ref = Engine(gpu_config(model, "fp32", 1), 3).generate_batch(prompts, greedy(80));
  const auto got = Engine(gpu_config(model, "fp32", 2), 3).generate_batch(prompts, greedy(80));
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i].tokens, ref[i].tokens) << prompts[i];
}

// A random-weight model with grouped-query attention and a head size of 64, in bf16: 2 and 4 ranks give
// the one-rank logits along the greedy path within the bf16 bound.
TEST(TensorParallelCuda, RandomWeightGqaModelSplitsWithinTheBf16Bound) {
  LLM_REQUIRE_GPUS(2);
  LLM_REQUIRE_MODEL(tokenizer, "tok512.bin");
  test::TempDir dir;
  const std::string path = test::random_gqa_model(dir, "gqa_random.bin", 1408, 11);
  Engine one(gpu_config(path, "bf16", 1));
  for (int world : {2, 4}) {
    if (world > gpu_count()) continue;
    Engine split(gpu_config(path, "bf16", world));
    const test::PathComparison c = test::compare_along_path(split, one, 80);
    std::printf("random GQA model, bf16, %d GPUs: max relative L2 logit error %.3g, argmax differs at %d of 80\n",
                world, c.max_rel_err, c.argmax_differs);
    EXPECT_LT(c.max_rel_err, 1e-2) << world;
    EXPECT_EQ(c.unexplained, 0) << world;
  }
}

// Two ranks' buffers on two GPUs, filled with fresh random values and poisoned nowhere else: every rank
// gets the exact sum (two floats add the same in either order), through the P2P kernel for decode-sized
// buffers and NCCL above, call after call (the P2P inboxes alternate), eagerly and replayed from graphs.
TEST(TensorParallelCuda, AllReduceGivesTheExactSumOnEveryRank) {
  LLM_REQUIRE_GPUS(2);
  cuda::NcclGroup group({0, 1});
  std::printf("small all-reduces: %s\n", group.small_all_reduce().c_str());
  const size_t p2p_max = cuda::NcclGroup::kP2pMaxBytes / sizeof(float);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  struct Rank {
    float* data = nullptr;
    cudaStream_t stream = nullptr;
    cudaGraphExec_t graph = nullptr;
  };
  for (const bool graphs : {false, true})
    for (const size_t count : {size_t{1}, size_t{1000}, size_t{16384}, p2p_max, p2p_max + 1, size_t{1} << 21}) {
      Rank ranks[2];
      for (int r = 0; r < 2; ++r) {
        LLM_CUDA_CHECK(cudaSetDevice(r));
        LLM_CUDA_CHECK(cudaMalloc(&ranks[r].data, count * sizeof(float)));
        LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&ranks[r].stream, cudaStreamNonBlocking));
      }
      // Each rank from a thread of its own, as in the model (NCCL blocks a lone thread driving two ranks).
      auto on_ranks = [&](const std::function<void(int)>& f) {
        auto other = std::async(std::launch::async, [&] { f(1); });
        f(0);
        other.get();
      };
      if (graphs)
        on_ranks([&](int r) {
          LLM_CUDA_CHECK(cudaSetDevice(r));
          cudaGraph_t g = nullptr;
          LLM_CUDA_CHECK(cudaStreamBeginCapture(ranks[r].stream, cudaStreamCaptureModeThreadLocal));
          group.rank(r).all_reduce_sum(ranks[r].data, count, ranks[r].stream);
          LLM_CUDA_CHECK(cudaStreamEndCapture(ranks[r].stream, &g));
          LLM_CUDA_CHECK(cudaGraphInstantiate(&ranks[r].graph, g, 0));
          LLM_CUDA_CHECK(cudaGraphDestroy(g));
        });
      for (int call = 0; call < 3; ++call) {
        std::vector<float> in[2], out[2];
        for (int r = 0; r < 2; ++r) {
          in[r].resize(count);
          for (float& v : in[r]) v = normal(rng);
          LLM_CUDA_CHECK(cudaSetDevice(r));
          LLM_CUDA_CHECK(cudaMemcpy(ranks[r].data, in[r].data(), count * sizeof(float), cudaMemcpyHostToDevice));
        }
        on_ranks([&](int r) {
          LLM_CUDA_CHECK(cudaSetDevice(r));
          if (graphs)
            LLM_CUDA_CHECK(cudaGraphLaunch(ranks[r].graph, ranks[r].stream));
          else
            group.rank(r).all_reduce_sum(ranks[r].data, count, ranks[r].stream);
          LLM_CUDA_CHECK(cudaStreamSynchronize(ranks[r].stream));
          out[r].resize(count);
          LLM_CUDA_CHECK(cudaMemcpy(out[r].data(), ranks[r].data, count * sizeof(float), cudaMemcpyDeviceToHost));
        });
        size_t wrong = 0;
        for (size_t i = 0; i < count; ++i)
          for (int r = 0; r < 2; ++r) wrong += !(out[r][i] == in[0][i] + in[1][i]);
        EXPECT_EQ(wrong, 0u) << count << " floats, call " << call << (graphs ? ", graph" : "");
      }
      for (int r = 0; r < 2; ++r) {
        LLM_CUDA_CHECK(cudaSetDevice(r));
        if (ranks[r].graph) cudaGraphExecDestroy(ranks[r].graph);
        cudaStreamDestroy(ranks[r].stream);
        cudaFree(ranks[r].data);
      }
    }
}

// A rank waiting in the all-reduce for a rank that failed is released when the group is aborted (what
// TensorParallelModel does when a rank throws), rather than spinning on the GPU for ever.
TEST(TensorParallelCuda, AbortReleasesARankWaitingInTheAllReduce) {
  LLM_REQUIRE_GPUS(2);
  for (const size_t count : {size_t{4096}, size_t{1} << 20}) {  // the P2P kernel's size, then NCCL's
    SCOPED_TRACE(count);
    cuda::NcclGroup group({0, 1});
    LLM_CUDA_CHECK(cudaSetDevice(0));
    float* data = nullptr;
    cudaStream_t stream = nullptr;
    LLM_CUDA_CHECK(cudaMalloc(&data, count * sizeof(float)));
    LLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    auto waiting = std::async(std::launch::async, [&] {
      cudaSetDevice(0);
      group.rank(0).all_reduce_sum(data, count, stream);  // rank 1 never joins
      return cudaStreamSynchronize(stream);
    });
    EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
        << "rank 0 finished an all-reduce that rank 1 never joined";
    group.abort();
    if (waiting.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      std::fprintf(stderr, "FATAL: rank 0 still waits in the all-reduce 60 s after the abort\n");
      std::_Exit(3);  // a hang would stall the whole suite
    }
    waiting.get();
    cudaGetLastError();
    cudaStreamDestroy(stream);
    cudaFree(data);
  }
}

// Every rank's last backend failing ends the run with that backend's error, not a hang.
TEST(TensorParallelCuda, ABackendFailingOnEveryRankIsAClearError) {
  LLM_REQUIRE_GPUS(2);
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  RunConfig c = gpu_config(model, "bf16", 2);
  c.backend_order = {"mha_cuda"};
  c.fail_backend = {"mha_cuda@12"};  // layer 2 of the second decode step, on every rank; nothing after it
  Engine split(c);
  auto run = std::async(std::launch::async, [&] {
    try {
      split.generate("Once upon a time", greedy(20));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  });
  if (run.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: a rank was left waiting after its backend failed\n");
    std::_Exit(3);  // a hang would stall the whole suite
  }
  EXPECT_THAT(run.get(), HasSubstr("mha_cuda"));
}

// Asking for more GPUs than there are is a clear error before anything is loaded onto them.
TEST(TensorParallelCuda, MoreRanksThanGpusIsAClearError) {
  LLM_REQUIRE_GPUS(1);
  LLM_REQUIRE_MODEL(model, "stories260K.bin");
  const int world = gpu_count() < 2 ? 2 : 4;
  if (world <= gpu_count()) GTEST_SKIP() << "every group size that divides stories260K fits on these GPUs";
  try {
    Engine e(gpu_config(model, "bf16", world));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("needs " + std::to_string(world) + " GPUs"));
  }
}

}  // namespace
}  // namespace llm
