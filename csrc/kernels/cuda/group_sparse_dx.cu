// Input gradient of the group-shared fixed fan-in layer, deterministic:
//   dx[b, idx[g, k]] += sum_j dY[b, g*G + j] W[g*G + j, k]
// Pass 1: CTA = (a range of groups, a tile of BM batch rows). For each group it forms
// dX_g = dY_g W_g on tensor cores, one 64-wide K chunk at a time, and adds it into
// its accumulator of BM rows of dx: in shared memory when [BM, H] fits there (then
// written once to the CTA's workspace slice), else directly in that slice. Indices
// are unique within a group and groups are taken one after another, so no two
// threads touch the same element at once and no atomics are needed.
// Pass 2: dx = sum over slices, in slice order.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/group_sparse_dx_reduce.h"
#include "kernels/cuda/sm90/group_sparse_sm90.h"

namespace largeout::cuda {
namespace {

__host__ __device__ constexpr int64_t align128(int64_t n) { return (n + 127) / 128 * 128; }

template <class T, int G, int BM_>
struct DxCfg {
  static constexpr bool kTC = Elem<T>::kTensorCore;
  static constexpr int BM = BM_, BN = 64;
  static constexpr int LDD = smem_ld<T>(G), LDW = smem_ld<T>(BN), LDC = BN + 4;
  static constexpr int64_t kDyBytes = align128(int64_t(BM) * LDD * sizeof(T));
  static constexpr int64_t kWBytes = int64_t(G) * LDW * sizeof(T);
  static constexpr int64_t kEpilogueBytes = kTC ? int64_t(BM) * LDC * sizeof(float) : 0;
  // The epilogue tile reuses the weight buffer (the weights are reloaded per chunk).
  static constexpr int64_t kTileBytes = kDyBytes + (kWBytes > kEpilogueBytes ? kWBytes : kEpilogueBytes);
  using A = typename Elem<T>::acc;
  __host__ __device__ static int64_t acc_bytes(int64_t H) { return align128(int64_t(BM) * H * int64_t(sizeof(A))); }
};

template <class T, int G, int BM, bool kSmemAcc>
__global__ void __launch_bounds__(kThreads)
gsl_dx_partial_kernel(const T* __restrict__ dy, const T* __restrict__ w, const int32_t* __restrict__ idx,
                      typename Elem<T>::acc* __restrict__ part, int64_t B, int64_t H, int64_t L, int64_t K,
                      int64_t groups_per_split) {
  using C = DxCfg<T, G, BM>;
  using A = typename Elem<T>::acc;
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t acc_bytes = kSmemAcc ? C::acc_bytes(H) : 0;
  T* ds = reinterpret_cast<T*>(smem + acc_bytes);                           // [BM, G]
  T* wsm = reinterpret_cast<T*>(smem + acc_bytes + C::kDyBytes);            // [G, BN]
  float* cs = reinterpret_cast<float*>(smem + acc_bytes + C::kDyBytes);     // [BM, BN] (tensor-core path)

  const int64_t split = blockIdx.x, b0 = int64_t(blockIdx.y) * BM;
  const int bv = int(B - b0 < BM ? B - b0 : BM);
  const int64_t ng = (L + G - 1) / G;
  const int64_t g_begin = split * groups_per_split;
  const int64_t g_end = g_begin + groups_per_split < ng ? g_begin + groups_per_split : ng;
  A* my = part + (split * B + b0) * H;                       // this CTA's slice: bv rows of H
  A* acc = kSmemAcc ? reinterpret_cast<A*>(smem) : my;       // where the rows accumulate

  for (int64_t e = threadIdx.x; e < int64_t(bv) * H; e += kThreads) acc[e] = A(0);
  __syncthreads();

  using Tile = std::conditional_t<C::kTC, WmmaTile<T, BM, C::BN>, SimtTile<T, BM, C::BN>>;
  Tile tile;
  for (int64_t g = g_begin; g < g_end; ++g) {
    const int64_t l0 = g * G;
    const int gv = int(L - l0 < G ? L - l0 : G);
    const int32_t* gidx = idx + g * K;
    for (int e = threadIdx.x; e < BM * G; e += kThreads) {
      const int m = e / G, n = e % G;
      ds[m * C::LDD + n] = (m < bv && n < gv) ? dy[(b0 + m) * L + l0 + n] : zero_elem<T>();
    }
    for (int64_t k0 = 0; k0 < K; k0 += C::BN) {
      for (int e = threadIdx.x; e < G * C::BN; e += kThreads) {
        const int j = e / C::BN, kk = e % C::BN;
        const int64_t k = k0 + kk;
        wsm[j * C::LDW + kk] = (j < gv && k < K) ? w[(l0 + j) * K + k] : zero_elem<T>();
      }
      __syncthreads();
      tile.zero();
      tile.template mma<true, true>(ds, C::LDD, wsm, C::LDW, G);
      if constexpr (C::kTC) {
        __syncthreads();  // all warps are done reading wsm before cs overwrites it
        tile.store(cs, C::LDC);
        __syncthreads();
        for (int e = threadIdx.x; e < BM * C::BN; e += kThreads) {
          const int m = e / C::BN, kk = e % C::BN;
          const int64_t k = k0 + kk;
          if (m < bv && k < K) acc[int64_t(m) * H + gidx[k]] += cs[m * C::LDC + kk];
        }
      } else {
        const int kk = tile.col();
        const int64_t k = k0 + kk;
        if (k < K) {
          const int64_t h = gidx[k];
#pragma unroll
          for (int i = 0; i < Tile::kRows; ++i) {
            const int m = tile.row(i);
            if (m < bv) acc[int64_t(m) * H + h] += tile.acc[i];
          }
        }
      }
      __syncthreads();
    }
  }
  if constexpr (kSmemAcc) {
    for (int64_t e = threadIdx.x; e < int64_t(bv) * H; e += kThreads) my[e] = acc[e];
  }
}

constexpr int64_t kWorkspaceBudget = int64_t(512) << 20;  // bytes

// Calls fn.template operator()<BM, kSmemAcc>() for the plan's variant.
template <class Fn>
cudaError_t dispatch_variant(const DxPlan& plan, Fn&& fn) {
  if (!plan.smem_accumulator) return fn.template operator()<64, false>();
  switch (plan.rows_per_cta) {
    case 64: return fn.template operator()<64, true>();
    case 32: return fn.template operator()<32, true>();
    case 16: return fn.template operator()<16, true>();
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool group_size_supported(int64_t g) { return g == 16 || g == 32 || g == 64 || g == 128; }

DxPlan group_sparse_dx_plan(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev, int force_rows) {
  DxPlan p;
  if (force_rows == 0 && choose_path(Pass::kInput, dtype, s, dev) == Path::kSm90) {
    p.path = Path::kSm90;
    p.rows_per_cta = 32;
    p.rows_per_launch = s.batch;
    sm90::dx_layout(s, dev, &p.num_splits, &p.workspace_bytes);
    return p;
  }
  const int num_sms = dev.sms, max_smem_per_block = dev.smem_optin;
  // The largest batch tile whose shared-memory accumulator fits the device.
  dispatch_dtype_group(dtype, s.group_size, [&]<class T, int G>() -> cudaError_t {
    auto try_rows = [&]<int BM>() {
      using C = DxCfg<T, G, BM>;
      const int64_t need = C::acc_bytes(s.in_features) + C::kTileBytes;
      const bool allowed = force_rows == 0 || force_rows == BM;
      if (allowed && !p.smem_accumulator && need <= max_smem_per_block) {
        p.smem_accumulator = true;
        p.rows_per_cta = BM;
        p.smem_bytes = need;
      }
    };
    // Order measured on an H200 (bench/NOTES.md, dx variants): 32-row tiles first, and
    // the workspace accumulator for G = 128, where it was fastest. Provisional: these
    // kernels are latency-bound and the Hopper kernels replace them.
    if (G < 128 || force_rows != 0) {
      try_rows.template operator()<32>();
      try_rows.template operator()<64>();
      try_rows.template operator()<16>();
    }
    if (!p.smem_accumulator) {
      p.rows_per_cta = 64;
      p.smem_bytes = DxCfg<T, G, 64>::kTileBytes;
    }
    return cudaSuccess;
  });
  const int64_t bm = p.rows_per_cta;
  const int64_t acc_bytes = dtype == DType::kFloat64 ? 8 : 4;
  const int64_t row_bytes = std::max<int64_t>(1, s.in_features) * acc_bytes;
  int64_t rows = std::min(s.batch, kMaxGridY * bm);
  // Keep one slice per batch tile within the budget, then add group splits while they fit.
  while (rows > bm && rows * row_bytes > kWorkspaceBudget) rows = ceil_div(rows / 2, bm) * bm;
  const int64_t tiles = ceil_div(rows, bm);
  const int64_t target_ctas = int64_t(std::max(num_sms, 1)) * 4;
  const int64_t ng = s.num_groups();
  int64_t splits = std::clamp<int64_t>(ceil_div(target_ctas, tiles), 1, std::max<int64_t>(ng, 1));
  splits = std::max<int64_t>(1, std::min(splits, kWorkspaceBudget / (rows * row_bytes)));
  // Even out the ranges so that no split is empty.
  const int64_t per = ceil_div(ng, splits);
  p.num_splits = ceil_div(ng, per);
  p.rows_per_launch = rows;
  p.workspace_bytes = p.num_splits * rows * row_bytes;
  return p;
}

cudaError_t group_sparse_dx(DType dtype, const GroupSparseShape& s, const DxPlan& plan, const void* dy,
                            const void* weight, const int32_t* indices, void* dx, void* workspace,
                            cudaStream_t stream) {
  if (plan.rows_per_launch <= 0 || plan.num_splits <= 0) return cudaErrorInvalidValue;
  count_launch(Pass::kInput, plan.path);
  if (plan.path == Path::kSm90) {
    if (!aligned16(dy) || !aligned16(weight) || !aligned16(indices) || !aligned16(workspace))
      return cudaErrorMisalignedAddress;
    DeviceInfo dev;
    if (cudaError_t e = current_device_info(&dev); e != cudaSuccess) return e;
    return sm90::dx(dtype, s, dev, plan.num_splits, dy, weight, indices, dx, workspace, stream);
  }
  return dispatch_dtype_group(dtype, s.group_size, [&]<class T, int G>() -> cudaError_t {
    using A = typename Elem<T>::acc;
    return dispatch_variant(plan, [&]<int BM, bool kSmemAcc>() -> cudaError_t {
      auto kernel = gsl_dx_partial_kernel<T, G, BM, kSmemAcc>;
      const size_t smem = size_t(plan.smem_bytes);
      if (cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return e;
      const int64_t ng = s.num_groups();
      const int64_t per = ceil_div(ng, plan.num_splits);
      A* part = static_cast<A*>(workspace);
      for (int64_t r0 = 0; r0 < s.batch; r0 += plan.rows_per_launch) {
        const int64_t rows = std::min(plan.rows_per_launch, s.batch - r0);
        const dim3 grid(unsigned(plan.num_splits), unsigned(ceil_div(rows, BM)));
        kernel<<<grid, kThreads, smem, stream>>>(static_cast<const T*>(dy) + r0 * s.out_features,
                                                 static_cast<const T*>(weight), indices, part, rows, s.in_features,
                                                 s.out_features, s.fan_in, per);
        if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
        const int64_t n = rows * s.in_features;
        if (cudaError_t e = launch_dx_reduce<A, T>(part, static_cast<T*>(dx) + r0 * s.in_features,
                                                   plan.num_splits, n, stream);
            e != cudaSuccess)
          return e;
      }
      return cudaSuccess;
    });
  });
}

}  // namespace largeout::cuda
