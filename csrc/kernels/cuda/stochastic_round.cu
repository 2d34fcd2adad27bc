// CUDA stochastic rounding: one element per thread-iteration, the rule (its integer form) and the random
// bits shared with the CPU code (kernels/stochastic_round.h), so results are identical.
#include "kernels/cuda/stochastic_round_cuda.h"

namespace largeout::cuda {
namespace {

template <class Out>
__global__ void sr_kernel(SrFormat f, const float* __restrict__ x, Out* __restrict__ out, int64_t n, uint64_t seed,
                          uint64_t offset) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = Out(sr_round_bits_fast(x[i], f, sr_random_bits(seed, offset, i)));
}

}  // namespace

cudaError_t stochastic_round(SrFormat f, const float* x, void* out, int64_t n, uint64_t seed, uint64_t offset,
                             cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = unsigned((n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536);
  if (sr_format_info(f).bytes == 2)
    sr_kernel<uint16_t><<<blocks, 256, 0, stream>>>(f, x, static_cast<uint16_t*>(out), n, seed, offset);
  else
    sr_kernel<uint8_t><<<blocks, 256, 0, stream>>>(f, x, static_cast<uint8_t*>(out), n, seed, offset);
  return cudaGetLastError();
}

}  // namespace largeout::cuda
