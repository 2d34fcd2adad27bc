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
// kScaled: times scale[i / cols] (vec also needs cols % 16 == 0: a chunk in one row).
template <bool kScaled>
__global__ void fp8_to_bf16_kernel(bool e4m3fn, bool vec, const uint8_t* __restrict__ in, uint16_t* __restrict__ out,
                                   int64_t n, const float* __restrict__ scale, int64_t cols) {
  auto cvt = [&](uint32_t code, float s) {
    if constexpr (kScaled) {
      return fp8_to_bf16_bits_scaled(code, e4m3fn, s);
    } else {
      return fp8_to_bf16_bits(code, e4m3fn);
    }
  };
  const int64_t chunks = vec ? n / 16 : 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const uint4 v = reinterpret_cast<const uint4*>(in)[c];
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    float s = 1.f;
    if constexpr (kScaled) s = scale[16 * c / cols];
    uint32_t o[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint32_t pair = (w[k >> 1] >> (16 * (k & 1))) & 0xffffu;
      o[k] = uint32_t(cvt(pair & 0xffu, s)) | (uint32_t(cvt(pair >> 8, s)) << 16);
    }
    uint4* dst = reinterpret_cast<uint4*>(out + 16 * c);
    dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
    dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
  for (int64_t i = 16 * chunks + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = cvt(in[i], kScaled ? scale[i / cols] : 1.f);
}

// fp8 quantization (see the header; the per-element rule is shared with the CPU op:
// abs_bits, e4m3_quant_scale, e4m3_quant_code in kernels/optim_step.h).
__device__ __forceinline__ uint32_t block_max(uint32_t v) {
  __shared__ uint32_t warp_max[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? warp_max[threadIdx.x] : 0u;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;  // in warp 0
}

__global__ void amax_kernel(ElemType t, const void* __restrict__ x, int64_t n, uint32_t* __restrict__ amax) {
  uint32_t m = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    m = max(m, abs_bits(x, t, i));
  m = block_max(m);
  if (threadIdx.x == 0) atomicMax(amax, m);
}

__global__ void quantize_tensor_kernel(ElemType t, const void* __restrict__ x, int64_t n,
                                       const uint32_t* __restrict__ amax, float* __restrict__ scale_out,
                                       uint8_t* __restrict__ q) {
  const float scale = e4m3_quant_scale(*amax);
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    q[i] = e4m3_quant_code(x, t, i, scale);
}

// One block per row: its amax, then its codes.
__global__ void quantize_rows_kernel(ElemType t, const void* __restrict__ x, int64_t cols, float* __restrict__ scale,
                                     uint8_t* __restrict__ q) {
  __shared__ float row_scale;
  const int64_t base = int64_t(blockIdx.x) * cols;
  uint32_t m = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = max(m, abs_bits(x, t, base + c));
  m = block_max(m);
  if (threadIdx.x == 0) {
    row_scale = e4m3_quant_scale(m);
    scale[blockIdx.x] = row_scale;
  }
  __syncthreads();
  const float s = row_scale;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) q[base + c] = e4m3_quant_code(x, t, base + c, s);
}

}  // namespace

cudaError_t fp8_quantize(ElemType t, const void* x, int64_t rows, int64_t cols, bool rowwise, uint8_t* q,
                         float* scale, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (rowwise) {
    if (rows > 0x7fffffff) return cudaErrorInvalidValue;
    quantize_rows_kernel<<<unsigned(rows), 256, 0, stream>>>(t, x, cols, scale, q);
    return cudaGetLastError();
  }
  const int64_t n = rows * cols;
  const unsigned blocks = unsigned((n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024);
  uint32_t* amax = reinterpret_cast<uint32_t*>(scale + 1);
  cudaError_t e = cudaMemsetAsync(amax, 0, sizeof(uint32_t), stream);
  if (e != cudaSuccess) return e;
  amax_kernel<<<blocks, 256, 0, stream>>>(t, x, n, amax);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  quantize_tensor_kernel<<<blocks, 256, 0, stream>>>(t, x, n, amax, scale, q);
  return cudaGetLastError();
}

cudaError_t fp8_to_bf16(bool e4m3fn, const uint8_t* in, uint16_t* out, int64_t n, const float* row_scale,
                        int64_t cols, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = (reinterpret_cast<uintptr_t>(in) & 15u) == 0 && (reinterpret_cast<uintptr_t>(out) & 15u) == 0 &&
                   (!row_scale || cols % 16 == 0);
  const int64_t work = vec ? (n + 15) / 16 : n;
  const unsigned blocks = unsigned((work + 255) / 256 < 65536 ? (work + 255) / 256 : 65536);
  if (row_scale) {
    fp8_to_bf16_kernel<true><<<blocks, 256, 0, stream>>>(e4m3fn, vec, in, out, n, row_scale, cols);
  } else {
    fp8_to_bf16_kernel<false><<<blocks, 256, 0, stream>>>(e4m3fn, vec, in, out, n, nullptr, 1);
  }
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
