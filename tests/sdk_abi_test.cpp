// Pins the SDK's ABI 1.0 layout on this platform (x86-64 Linux). A change here breaks every plugin built
// against 1.0: move ABI_VERSION_MAJOR, or append members instead (and bump the minor).
#include <gtest/gtest.h>
#include <llm/attention_backend.h>

#include <cstddef>

namespace {

TEST(SdkAbi, Version1LayoutIsPinned) {
  EXPECT_EQ(LLM_ABI_VERSION_MAJOR, 1);
  EXPECT_EQ(sizeof(llm_host_services), 24u);
  EXPECT_EQ(offsetof(llm_host_services, parallel_for), 16u);
  EXPECT_EQ(sizeof(llm_device_info), 56u);
  EXPECT_EQ(offsetof(llm_device_info, name), 40u);
  EXPECT_EQ(offsetof(llm_device_info, host), 48u);
  EXPECT_EQ(sizeof(llm_attention_shape), 36u);
  EXPECT_EQ(sizeof(llm_probe_result), 272u);
  EXPECT_EQ(offsetof(llm_probe_result, reason), 16u);
  EXPECT_EQ(sizeof(llm_kv_cache_view), 80u);
  EXPECT_EQ(offsetof(llm_kv_cache_view, block_table), 72u);
  EXPECT_EQ(sizeof(llm_attention_args), 136u);
  EXPECT_EQ(offsetof(llm_attention_args, q), 40u);
  EXPECT_EQ(offsetof(llm_attention_args, kv), 112u);
  EXPECT_EQ(offsetof(llm_attention_args, stream), 120u);
  EXPECT_EQ(offsetof(llm_attention_args, overlap), 128u);  // since 1.2
  EXPECT_EQ(offsetof(llm_backend_iface, name), 16u);
  EXPECT_EQ(offsetof(llm_backend_iface, probe), 40u);
  EXPECT_EQ(offsetof(llm_backend_iface, last_error), 80u);
  // 1.1 appended one member after everything 1.0 had
  EXPECT_EQ(offsetof(llm_backend_iface, min_runtime_minor), 88u);
  EXPECT_EQ(sizeof(llm_backend_iface), 96u);
}

TEST(SdkAbi, KvOffsetAddressesBothLayouts) {
  llm_kv_cache_view v{};
  v.seq_stride = 1000, v.token_stride = 10, v.head_stride = 3;
  EXPECT_EQ(llm_kv_offset(&v, 2, 5, 1), 2 * 1000 + 5 * 10 + 3);
  const int32_t table[] = {7, 4, 9, 1, 0, 2};  // 2 slots x 3 blocks
  v.layout = LLM_KV_LAYOUT_PAGED, v.block_size = 4, v.max_blocks_per_seq = 3, v.block_stride = 40;
  v.block_table = table;
  EXPECT_EQ(llm_kv_offset(&v, 1, 6, 2), 0 * 40 + 2 * 10 + 2 * 3);  // slot 1, block 6/4=1 -> table[4]=0
  EXPECT_EQ(llm_kv_offset(&v, 0, 9, 0), 9 * 40 + 1 * 10);          // slot 0, block 2 -> table[2]=9
}

}  // namespace
