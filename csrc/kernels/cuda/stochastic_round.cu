// CUDA stochastic rounding: one element per thread-iteration, the rule (its integer form) and the random
// bits shared with the CPU code (kernels/stochastic_round.h), so results are identical. And the
// exact fp8 -> bf16 conversion, 16 elements per thread-iteration with 16-byte accesses.
#include "kernels/cuda/stochastic_round_cuda.h"

namespace largeout::cuda {
namespace {

template <class Out>
__global__ void sr_kernel(SrFormat f, const float* __restrict__ x, Out* __restrict__ out, int64_t n, uint64_t seed,
                          uint64_t offset) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = Out(sr_round_bits_fast(x[i], f, sr_random_bits(seed, offset, i)));
}

// vec (both pointers 16-byte aligned): 16 codes per iteration, one 16-byte load and two
// 16-byte stores, then the last n % 16 elements one by one; else every element one by one.
__global__ void fp8_to_bf16_kernel(bool e4m3fn, bool vec, const uint8_t* __restrict__ in, uint16_t* __restrict__ out,
                                   int64_t n) {
  const int64_t chunks = vec ? n / 16 : 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const uint4 v = reinterpret_cast<const uint4*>(in)[c];
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    uint32_t o[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint32_t pair = (w[k >> 1] >> (16 * (k & 1))) & 0xffffu;
      o[k] = uint32_t(fp8_to_bf16_bits(pair & 0xffu, e4m3fn)) | (uint32_t(fp8_to_bf16_bits(pair >> 8, e4m3fn)) << 16);
    }
    uint4* dst = reinterpret_cast<uint4*>(out + 16 * c);
    dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
    dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
  for (int64_t i = 16 * chunks + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = fp8_to_bf16_bits(in[i], e4m3fn);
}

}  // namespace

cudaError_t fp8_to_bf16(bool e4m3fn, const uint8_t* in, uint16_t* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = (reinterpret_cast<uintptr_t>(in) & 15u) == 0 && (reinterpret_cast<uintptr_t>(out) & 15u) == 0;
  const int64_t work = vec ? (n + 15) / 16 : n;
  const unsigned blocks = unsigned((work + 255) / 256 < 65536 ? (work + 255) / 256 : 65536);
  fp8_to_bf16_kernel<<<blocks, 256, 0, stream>>>(e4m3fn, vec, in, out, n);
  return cudaGetLastError();
}

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
