// The backward's dY preparation (largeout.pad_columns_sum): one pass over dY [M, L] (bf16 or
// fp16, any strides) that writes its copy with zero columns up to Lp (a multiple of 8:
// 16-byte aligned rows for the backward's GEMMs) and/or its fp32 column sums (the bias
// gradient). Replaces a strided copy and a column reduction that each read all of dY (and
// which ATen splits into two launches once dY passes 2^31 bytes).
//
// Layout: a block of 256 threads owns 256 columns (8 per lane, one 16-byte output vector);
// its 8 warps take every 8th row of the block's row range. With unit column stride a lane
// loads the aligned 16-byte vector holding its first element and takes the next vector from
// the lane to its right (a shuffle), so every row is read with aligned vector loads whatever
// its offset. Column sums: per-lane fp32 over its rows, then across the 8 warps in shared
// memory; when the columns alone give too few blocks the rows are split over blockIdx.y into
// partial sums that a second kernel adds in a fixed order (deterministic).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/pad_columns_cuda.h"
#include "kernels/cuda/vec_store.cuh"

namespace largeout::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kCols = 256;  // per block: 32 lanes x 8 columns

// The two 16-bit elements of a word as floats (bf16, or fp16 where kHalf).
template <bool kHalf>
__device__ __forceinline__ float2 pair_f(uint32_t w) {
  if constexpr (kHalf) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  } else {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
}

// Elements o .. o + 7 (o in [0, 8)) of the 16 bf16 in a (elements 0-7) and b (8-15).
__device__ __forceinline__ uint4 shift_elems(uint4 a, uint4 b, int o) {
  uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  const bool s2 = o & 4, s1 = o & 2, odd = o & 1;
#pragma unroll
  for (int i = 0; i < 6; ++i) w[i] = s2 ? w[i + 2] : w[i];  // by 4 elements (2 words)
#pragma unroll
  for (int i = 0; i < 5; ++i) w[i] = s1 ? w[i + 1] : w[i];  // by 2 elements (1 word)
  uint32_t r[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) r[i] = odd ? __byte_perm(w[i], w[i + 1], 0x5432) : w[i];  // by 1 element
  return make_uint4(r[0], r[1], r[2], r[3]);
}

__device__ __forceinline__ uint4 shfl_down4(uint4 v) {
  v.x = __shfl_down_sync(0xffffffffu, v.x, 1);
  v.y = __shfl_down_sync(0xffffffffu, v.y, 1);
  v.z = __shfl_down_sync(0xffffffffu, v.z, 1);
  v.w = __shfl_down_sync(0xffffffffu, v.w, 1);
  return v;
}

// Columns [c, c + 8) of row r as 8 bf16 (zero at and after column L).
// kUnit: column stride 1, gv the 16-byte aligned vector view of the data with base_mis
// elements before g's first one.
template <bool kUnit>
__device__ __forceinline__ uint4 load_row8(const uint16_t* __restrict__ g, const uint4* __restrict__ gv,
                                           int64_t base_mis, int64_t r, int64_t c, int64_t L, int64_t ld,
                                           int64_t cs, int lane) {
  if constexpr (kUnit) {
    const int64_t e = base_mis + r * ld + c;  // in elements from the aligned base
    const int o = int(e & 7);
    const int64_t v = e >> 3;
    const bool full = c + 8 <= L;
    uint4 a = make_uint4(0, 0, 0, 0);
    if (c < L) a = gv[v];  // holds element c: inside the allocation
    uint4 b = shfl_down4(a);  // the next vector, from the lane to the right (its c + 8 < L)
    if (full) {
      if (o != 0 && (lane == 31 || c + 8 >= L)) b = gv[v + 1];  // holds column c + 7, valid
      return shift_elems(a, b, o);
    }
    if (c >= L) return make_uint4(0, 0, 0, 0);
    uint32_t w[4] = {0, 0, 0, 0};  // the row's last, partial vector: element loads
    const uint16_t* p = g + r * ld;
    for (int j = 0; c + j < L; ++j) w[j >> 1] |= uint32_t(p[c + j]) << (16 * (j & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    (void)gv, (void)base_mis, (void)lane;
    uint32_t w[4] = {0, 0, 0, 0};
    const uint16_t* p = g + r * ld;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (c + j < L) w[j >> 1] |= uint32_t(p[(c + j) * cs]) << (16 * (j & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}

template <bool kUnit, bool kHalf>
__global__ void __launch_bounds__(kWarps * 32)
    pad_columns_sum_kernel(const uint16_t* __restrict__ g, int64_t base_mis, int64_t M, int64_t L, int64_t ld,
                           int64_t cs, uint16_t* __restrict__ out, int64_t Lp, float* __restrict__ sums,
                           int64_t rows_per_split) {
  __shared__ float part[kWarps][kCols + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c = int64_t(blockIdx.x) * kCols + lane * 8;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < M ? r0 + rows_per_split : M;
  const uint4* gv = reinterpret_cast<const uint4*>(g - base_mis);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  // Every lane runs the same rows (the shuffle needs the whole warp), also those past Lp.
  constexpr int kUnroll = 4;
  for (int64_t rb = r0 + warp; rb < r1; rb += kWarps * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = rb + int64_t(u) * kWarps;
      v[u] = r < r1 ? load_row8<kUnit>(g, gv, base_mis, r, c, L, ld, cs, lane) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = rb + int64_t(u) * kWarps;
      if (r >= r1) break;
      // (one 16-byte store: the plain uint4 assignment compiled to four 4-byte stores)
      if (out && c < Lp) st_global_v4(out + r * Lp + c, v[u]);
      const uint32_t w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = pair_f<kHalf>(w[i]);
        acc[2 * i] += f.x;
        acc[2 * i + 1] += f.y;
      }
    }
  }
  if (!sums) return;
#pragma unroll
  for (int j = 0; j < 8; ++j) part[warp][lane * 8 + j] = acc[j];
  __syncthreads();
  const int64_t col = int64_t(blockIdx.x) * kCols + threadIdx.x;
  if (col < L) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += part[w][threadIdx.x];
    sums[int64_t(blockIdx.y) * L + col] = s;
  }
}

// sums[c] = sum over s of partial[s, c], in order of s.
__global__ void add_splits_kernel(const float* __restrict__ partial, int64_t splits, int64_t L,
                                  float* __restrict__ sums) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= L) return;
  float s = 0.f;
  for (int64_t k = 0; k < splits; ++k) s += partial[k * L + c];
  sums[c] = s;
}

}  // namespace

int64_t pad_columns_sum_splits(int64_t M, int64_t Lp, int sms) {
  const int64_t col_blocks = (Lp + kCols - 1) / kCols;
  const int64_t want = 4 * int64_t(sms);  // blocks to fill the GPU (8 resident per SM; half is plenty)
  if (col_blocks >= want || M <= 256) return 1;
  int64_t splits = (want + col_blocks - 1) / col_blocks;
  const int64_t max_splits = (M + 127) / 128;  // at least 128 rows per split
  return splits < max_splits ? splits : max_splits;
}

cudaError_t pad_columns_sum(const uint16_t* g, bool half, int64_t M, int64_t L, int64_t ld, int64_t cs,
                            uint16_t* out, int64_t Lp, float* sums, float* partial, int64_t splits,
                            cudaStream_t stream) {
  if (Lp == 0 || M == 0) return cudaSuccess;  // (the caller zeroes the sums of an empty batch)
  const int64_t col_blocks = (Lp + kCols - 1) / kCols;
  if (col_blocks > 0x7fffffff || splits < 1 || splits > 65535) return cudaErrorInvalidValue;
  const int64_t rows_per_split = (M + splits - 1) / splits;
  float* s = sums == nullptr ? nullptr : splits > 1 ? partial : sums;
  const dim3 grid{unsigned(col_blocks), unsigned(splits)};
  const int64_t base_mis = int64_t((reinterpret_cast<uintptr_t>(g) >> 1) & 7);
  auto launch = [&](auto kernel, int64_t mis) {
    kernel<<<grid, kWarps * 32, 0, stream>>>(g, mis, M, L, ld, cs, out, Lp, s, rows_per_split);
  };
  if (cs == 1)
    half ? launch(pad_columns_sum_kernel<true, true>, base_mis) : launch(pad_columns_sum_kernel<true, false>, base_mis);
  else
    half ? launch(pad_columns_sum_kernel<false, true>, 0) : launch(pad_columns_sum_kernel<false, false>, 0);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || !sums || splits == 1) return e;
  add_splits_kernel<<<unsigned((L + 255) / 256), 256, 0, stream>>>(partial, splits, L, sums);
  return cudaGetLastError();
}

}  // namespace largeout::cuda
