// A ForwardBatch flattened into rows, shared by the CPU forward (qwen3_forward.cpp) and the GPU forward
// (qwen3_forward_cuda.cpp). Page tables point into the batch's host spans.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/paged_kv.h"
#include "model/qwen3_model.h"

namespace fp4serve {

struct Qwen3Model::BatchLayout {
  std::vector<int32_t> token_ids;  // [n_rows]
  std::vector<int32_t> positions;  // [n_rows]
  std::vector<PagedSequence> sequences;
  std::vector<int64_t> last_rows;  // each sequence's last row
  const KvCacheTensors* kv_cache;
  int64_t n_rows() const { return static_cast<int64_t>(token_ids.size()); }
};

}  // namespace fp4serve
