// Weight and bias gradients of the group-shared fixed fan-in layer:
//   dW_g [G, K] = dY_g^T [G, B] X_g [B, K],   dbias[l] = sum_b dY[b, l].
// CTA = (one group, a 64-wide tile of K); it runs over the whole batch in a fixed
// order, so the result is deterministic. CTAs of the first K tile also sum dbias.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/sm90/group_sparse_sm90.h"

namespace largeout::cuda {
namespace {

template <class T, int G>
struct DwCfg {
  static constexpr bool kTC = Elem<T>::kTensorCore;
  static constexpr int BN = 64, BB = kTC ? 32 : 16;
  static constexpr int LDD = smem_ld<T>(G), LDX = smem_ld<T>(BN), LDC = BN + 4;
  static constexpr size_t kOperandBytes = size_t(BB * LDD + BB * LDX) * sizeof(T);
  static constexpr size_t kEpilogueBytes = kTC ? size_t(G) * LDC * sizeof(float) : 0;
  static constexpr size_t kSmem = kOperandBytes > kEpilogueBytes ? kOperandBytes : kEpilogueBytes;
};

template <class T, int G>
__global__ void __launch_bounds__(kThreads)
gsl_dw_kernel(const T* __restrict__ dy, const T* __restrict__ x, const int32_t* __restrict__ idx,
              T* __restrict__ dw, T* __restrict__ dbias, int64_t B, int64_t H, int64_t L, int64_t K) {
  using C = DwCfg<T, G>;
  using A = typename Elem<T>::acc;
  extern __shared__ __align__(128) unsigned char smem[];
  T* ds = reinterpret_cast<T*>(smem);  // [BB, G]: dY rows of the group
  T* xs = ds + C::BB * C::LDD;         // [BB, BN]: gathered inputs

  const int64_t g = blockIdx.x, k0 = int64_t(blockIdx.y) * C::BN;
  const int64_t l0 = g * G;
  const int gv = int(L - l0 < G ? L - l0 : G);
  const int32_t* gidx = idx + g * K;
  const bool do_bias = dbias != nullptr && blockIdx.y == 0 && threadIdx.x < G;
  A bacc = 0;

  using Tile = std::conditional_t<C::kTC, WmmaTile<T, G, C::BN>, SimtTile<T, G, C::BN>>;
  Tile tile;
  tile.zero();
  for (int64_t b0 = 0; b0 < B; b0 += C::BB) {
    for (int e = threadIdx.x; e < C::BB * G; e += kThreads) {
      const int bb = e / G, n = e % G;
      const int64_t b = b0 + bb;
      ds[bb * C::LDD + n] = (b < B && n < gv) ? dy[b * L + l0 + n] : zero_elem<T>();
    }
    for (int e = threadIdx.x; e < C::BB * C::BN; e += kThreads) {
      const int bb = e / C::BN, kk = e % C::BN;
      const int64_t b = b0 + bb, k = k0 + kk;
      xs[bb * C::LDX + kk] = (b < B && k < K) ? x[b * H + gidx[k]] : zero_elem<T>();
    }
    __syncthreads();
    if (do_bias) {
      for (int bb = 0; bb < C::BB; ++bb) bacc += Elem<T>::to_acc(ds[bb * C::LDD + threadIdx.x]);
    }
    // A(m = label, k = row) = ds[row, label]: column-major; B(k = row, n) = xs[row, n]: row-major.
    tile.template mma<false, true>(ds, C::LDD, xs, C::LDX, C::BB);
    __syncthreads();
  }

  if constexpr (C::kTC) {
    float* cs = reinterpret_cast<float*>(smem);
    tile.store(cs, C::LDC);
    __syncthreads();
    for (int e = threadIdx.x; e < G * C::BN; e += kThreads) {
      const int n = e / C::BN, kk = e % C::BN;
      if (n < gv && k0 + kk < K) dw[(l0 + n) * K + k0 + kk] = Elem<T>::from_acc(cs[n * C::LDC + kk]);
    }
  } else {
    const int kk = tile.col();
#pragma unroll
    for (int i = 0; i < Tile::kRows; ++i) {
      const int n = tile.row(i);
      if (n < gv && k0 + kk < K) dw[(l0 + n) * K + k0 + kk] = Elem<T>::from_acc(tile.acc[i]);
    }
  }
  if (do_bias && int(threadIdx.x) < gv) dbias[l0 + threadIdx.x] = Elem<T>::from_acc(bacc);
}

}  // namespace

DwPlan group_sparse_dw_plan(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev) {
  DwPlan p;
  p.path = choose_path(Pass::kWeight, dtype, s, dev);
  if (p.path == Path::kSm90) p.workspace_bytes = sm90::dw_workspace_bytes(dtype, s);
  return p;
}

cudaError_t group_sparse_dw(DType dtype, const GroupSparseShape& s, const DwPlan& plan, const void* dy,
                            const void* x, const int32_t* indices, void* dweight, void* dbias, void* workspace,
                            cudaStream_t stream) {
  count_launch(Pass::kWeight, plan.path);
  if (plan.path == Path::kSm90) {
    if (!aligned16(workspace) || !aligned16(dy)) return cudaErrorMisalignedAddress;
    DeviceInfo dev;
    if (cudaError_t e = current_device_info(&dev); e != cudaSuccess) return e;
    return sm90::dw(dtype, s, dev, dy, x, indices, dweight, dbias, workspace, stream);
  }
  return dispatch_dtype_group(dtype, s.group_size, [&]<class T, int G>() -> cudaError_t {
    using C = DwCfg<T, G>;
    auto kernel = gsl_dw_kernel<T, G>;
    if (cudaError_t e = allow_smem(kernel, C::kSmem); e != cudaSuccess) return e;
    const dim3 grid(unsigned(s.num_groups()), unsigned(ceil_div(s.fan_in, C::BN)));
    kernel<<<grid, kThreads, C::kSmem, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), indices, static_cast<T*>(dweight),
        static_cast<T*>(dbias), s.batch, s.in_features, s.out_features, s.fan_in);
    return cudaGetLastError();
  });
}

}  // namespace largeout::cuda
