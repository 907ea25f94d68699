// Embedding gather kernel: one CTA per token, 16-byte copies; a bad id writes a NaN row and reads nothing.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/row_kernels.h"

namespace fp4serve::cuda {
namespace {

__global__ void embedding_kernel(const bf16_bits* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                                 bf16_bits* out) {
  const int64_t token = blockIdx.x, id = ids[token];
  uint4* dst = reinterpret_cast<uint4*>(out + token * hidden);
  const bool valid = id >= 0 && id < vocab;
  const uint4* src = reinterpret_cast<const uint4*>(table + (valid ? id : 0) * hidden);
  constexpr uint32_t kNanPair = 0x7fc07fc0u;  // two bf16 quiet NaNs
  for (int64_t c = threadIdx.x; c < hidden / 8; c += blockDim.x)
    dst[c] = valid ? src[c] : make_uint4(kNanPair, kNanPair, kNanPair, kNanPair);
}

}  // namespace

void launch_embedding_lookup(const bf16_bits* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                             int64_t n_tokens, bf16_bits* out, void* stream) {
  if (n_tokens == 0) return;
  embedding_kernel<<<static_cast<unsigned>(n_tokens), 128, 0, static_cast<cudaStream_t>(stream)>>>(table, vocab, hidden,
                                                                                                   ids, out);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
