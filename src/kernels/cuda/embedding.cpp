// Host side of the embedding gather: validation naming the field at fault.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/embedding.h"

#include <cstdint>

#include "common/error.h"
#include "kernels/cuda/row_kernels.h"

namespace fp4serve::cuda {

void embedding_lookup_cuda(const bf16_bits* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n_tokens,
                           bf16_bits* out, void* stream) {
  constexpr const char* op = "embedding_lookup_cuda";
  FP4_CHECK(vocab >= 1 && vocab <= (int64_t{1} << 31) - 1, "{}: vocab = {} is out of range", op, vocab);
  FP4_CHECK(hidden >= 8 && hidden % 8 == 0, "{}: hidden = {} must be a positive multiple of 8", op, hidden);
  FP4_CHECK(n_tokens >= 0 && n_tokens <= (int64_t{1} << 31) - 1, "{}: n_tokens = {} is out of range", op, n_tokens);
  if (n_tokens == 0) return;
  auto aligned16 = [](const void* p) { return p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  FP4_CHECK(aligned16(table) && aligned16(out), "{}: table and out must be non-null 16-byte aligned device pointers",
            op);
  FP4_CHECK(ids != nullptr, "{}: ids must be a device pointer", op);
  launch_embedding_lookup(table, vocab, hidden, ids, n_tokens, out, stream);
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
