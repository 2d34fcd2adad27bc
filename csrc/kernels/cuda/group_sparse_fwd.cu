// Forward of the group-shared fixed fan-in layer.
// CTA = (one group of G labels, a tile of 64 batch rows). The group's K shared
// inputs are gathered from x into shared memory once per K-chunk and multiplied
// with the G weight rows of the group on tensor cores (16-bit types) or CUDA cores.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/sm90/group_sparse_sm90.h"

namespace largeout::cuda {
namespace {

template <class T, int G>
struct FwdCfg {
  static constexpr bool kTC = Elem<T>::kTensorCore;
  static constexpr int BM = 64, BK = kTC ? 32 : 16;
  static constexpr int LDX = smem_ld<T>(BK), LDW = smem_ld<T>(BK), LDC = G + 4;
  static constexpr size_t kOperandBytes = size_t(BM * LDX + G * LDW) * sizeof(T);
  static constexpr size_t kEpilogueBytes = kTC ? size_t(BM) * LDC * sizeof(float) : 0;
  static constexpr size_t kSmem = kOperandBytes > kEpilogueBytes ? kOperandBytes : kEpilogueBytes;
};

template <class T, int G>
__global__ void __launch_bounds__(kThreads)
gsl_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const int32_t* __restrict__ idx,
               const T* __restrict__ bias, T* __restrict__ y, int64_t B, int64_t H, int64_t L, int64_t K) {
  using C = FwdCfg<T, G>;
  using A = typename Elem<T>::acc;
  extern __shared__ __align__(128) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);
  T* ws = xs + C::BM * C::LDX;

  const int64_t g = blockIdx.x, b0 = int64_t(blockIdx.y) * C::BM;
  const int64_t l0 = g * G;
  const int gv = int(L - l0 < G ? L - l0 : G);
  const int32_t* gidx = idx + g * K;

  using Tile = std::conditional_t<C::kTC, WmmaTile<T, C::BM, G>, SimtTile<T, C::BM, G>>;
  Tile tile;
  tile.zero();
  for (int64_t k0 = 0; k0 < K; k0 += C::BK) {
    for (int e = threadIdx.x; e < C::BM * C::BK; e += kThreads) {
      const int m = e / C::BK, kk = e % C::BK;
      const int64_t b = b0 + m, k = k0 + kk;
      xs[m * C::LDX + kk] = (b < B && k < K) ? x[b * H + gidx[k]] : zero_elem<T>();
    }
    for (int e = threadIdx.x; e < G * C::BK; e += kThreads) {
      const int n = e / C::BK, kk = e % C::BK;
      const int64_t k = k0 + kk;
      ws[n * C::LDW + kk] = (n < gv && k < K) ? w[(l0 + n) * K + k] : zero_elem<T>();
    }
    __syncthreads();
    tile.template mma<true, false>(xs, C::LDX, ws, C::LDW, C::BK);
    __syncthreads();
  }

  if constexpr (C::kTC) {
    float* cs = reinterpret_cast<float*>(smem);
    tile.store(cs, C::LDC);
    __syncthreads();
    for (int e = threadIdx.x; e < C::BM * G; e += kThreads) {
      const int m = e / G, n = e % G;
      const int64_t b = b0 + m;
      if (b < B && n < gv) {
        float v = cs[m * C::LDC + n];
        if (bias) v += Elem<T>::to_acc(bias[l0 + n]);
        y[b * L + l0 + n] = Elem<T>::from_acc(v);
      }
    }
  } else {
    const int n = tile.col();
#pragma unroll
    for (int i = 0; i < Tile::kRows; ++i) {
      const int64_t b = b0 + tile.row(i);
      if (b < B && n < gv) {
        A v = tile.acc[i];
        if (bias) v += Elem<T>::to_acc(bias[l0 + n]);
        y[b * L + l0 + n] = Elem<T>::from_acc(v);
      }
    }
  }
}

}  // namespace

cudaError_t group_sparse_fwd(DType dtype, const GroupSparseShape& s, const void* x, const void* weight,
                             const int32_t* indices, const void* bias, void* y, cudaStream_t stream) {
  DeviceInfo dev;
  if (cudaError_t e = current_device_info(&dev); e != cudaSuccess) return e;
  if (choose_path(Pass::kForward, dtype, s, dev) == Path::kSm90) {
    if (!aligned16(x) || !aligned16(weight) || !aligned16(indices)) return cudaErrorMisalignedAddress;
    count_launch(Pass::kForward, Path::kSm90);
    return sm90::fwd(dtype, s, dev, x, weight, indices, bias, y, stream);
  }
  count_launch(Pass::kForward, Path::kGeneric);
  return dispatch_dtype_group(dtype, s.group_size, [&]<class T, int G>() -> cudaError_t {
    using C = FwdCfg<T, G>;
    auto kernel = gsl_fwd_kernel<T, G>;
    if (cudaError_t e = allow_smem(kernel, C::kSmem); e != cudaSuccess) return e;
    const int64_t ng = s.num_groups();
    const int64_t rows_per_launch = kMaxGridY * C::BM;
    for (int64_t r0 = 0; r0 < s.batch; r0 += rows_per_launch) {
      const int64_t rows = s.batch - r0 < rows_per_launch ? s.batch - r0 : rows_per_launch;
      const dim3 grid(unsigned(ng), unsigned(ceil_div(rows, C::BM)));
      kernel<<<grid, kThreads, C::kSmem, stream>>>(
          static_cast<const T*>(x) + r0 * s.in_features, static_cast<const T*>(weight), indices,
          static_cast<const T*>(bias), static_cast<T*>(y) + r0 * s.out_features, rows, s.in_features,
          s.out_features, s.fan_in);
      if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    }
    return cudaSuccess;
  });
}

}  // namespace largeout::cuda
