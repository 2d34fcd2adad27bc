// The fused optimizer step's CUDA kernel (see optim_step.cu), included by one
// translation unit per launch shape so that they compile in parallel.
#pragma once
#include "kernels/cuda/optim_step_cuda.h"

namespace largeout::cuda {
namespace optim_detail {

constexpr int kOptThreads = 256;

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Eight consecutive elements of any type as raw bits (up to 32 bytes). The loads of a
// batch of groups are issued before any of them is updated (memory-level parallelism);
// with the element size known at compile time the unused half never takes registers.
struct Raw8 {
  uint4 lo, hi;
};

__device__ __forceinline__ void load_raw(const void* base, int bytes, int64_t i0, Raw8& r) {
  switch (bytes) {
    case 4: {
      const uint4* q = reinterpret_cast<const uint4*>(static_cast<const uint32_t*>(base) + i0);
      r.lo = __ldcs(q);
      r.hi = __ldcs(q + 1);
      break;
    }
    case 2: r.lo = __ldcs(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + i0)); break;
    default: {
      const uint2 a = __ldcs(reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(base) + i0));
      r.lo.x = a.x;
      r.lo.y = a.y;
      break;
    }
  }
}

__device__ __forceinline__ void unpack8(const Raw8& r, int bytes, uint32_t out[8]) {
  const uint32_t w[8] = {r.lo.x, r.lo.y, r.lo.z, r.lo.w, r.hi.x, r.hi.y, r.hi.z, r.hi.w};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    out[j] = bytes == 4 ? w[j] : bytes == 2 ? (w[j >> 1] >> (16 * (j & 1))) & 0xffffu : (w[j >> 2] >> (8 * (j & 3))) & 0xffu;
  }
}

__device__ __forceinline__ void store8(void* base, int bytes, int64_t i0, const uint32_t c[8]) {
  switch (bytes) {
    case 4: {
      uint4* q = reinterpret_cast<uint4*>(static_cast<uint32_t*>(base) + i0);
      __stcs(q, make_uint4(c[0], c[1], c[2], c[3]));
      __stcs(q + 1, make_uint4(c[4], c[5], c[6], c[7]));
      break;
    }
    case 2:
      __stcs(reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i0),
             make_uint4(c[0] | (c[1] << 16), c[2] | (c[3] << 16), c[4] | (c[5] << 16), c[6] | (c[7] << 16)));
      break;
    default:
      __stcs(reinterpret_cast<uint2*>(static_cast<uint8_t*>(base) + i0),
             make_uint2(c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24),
                        c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24)));
      break;
  }
}

// The element-wise path (a tensor's last partial group, unaligned tensors): rare, kept
// out of line so that it does not take registers from the batched loop.
template <OptimKind K, ElemType P, ElemType S>
__device__ __noinline__ void update_scalar(const OptimSlot& s, ElemType G, const OptimHyper& h, int64_t i0, int n) {
  optim_update_range<K, P, S>(s, G, h, i0, n);
}

template <OptimKind K, ElemType P, ElemType S, int U, int MinBlocks>
__global__ void __launch_bounds__(kOptThreads, MinBlocks) optim_kernel(const OptimSlot* __restrict__ slots,
                                                             const int64_t* __restrict__ prefix, int num_slots,
                                                             int64_t total_groups, ElemType G, OptimHyper h) {
  constexpr ElemType C = comp_type(P);
  constexpr int pb = elem_bytes(P), sb = elem_bytes(S), cb = elem_bytes(C);
  const int gb = elem_bytes(G);
  // Grid-stride over batches of U * kOptThreads groups of 8 (group u of a batch: its
  // u-th block of kOptThreads, so a warp's accesses stay contiguous). A thread's groups
  // only move forward, so its slot index does too (a short forward scan of the prefix).
  int k = 0;
  const int64_t stride = int64_t(gridDim.x) * U * kOptThreads;
  for (int64_t first = int64_t(blockIdx.x) * U * kOptThreads + threadIdx.x; first < total_groups; first += stride) {
    int ks[U];
    bool vec[U];
    Raw8 rp[U], rg[U], r1[U], r2[U], rc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t gid = first + int64_t(u) * kOptThreads;
      vec[u] = false;
      ks[u] = k;
      if (gid >= total_groups) continue;
      while (__ldg(prefix + k + 1) <= gid) ++k;  // also skips empty slots
      ks[u] = k;
      const OptimSlot& s = slots[k];
      const int64_t i0 = (gid - __ldg(prefix + k)) * 8;
      vec[u] = s.numel - i0 >= 8 && aligned16(s.param) && aligned16(s.grad) && (!s.buf1 || aligned16(s.buf1)) &&
               (!s.buf2 || aligned16(s.buf2)) && (!s.comp || aligned16(s.comp));
      if (!vec[u]) continue;
      load_raw(s.param, pb, i0, rp[u]);
      load_raw(s.grad, gb, i0, rg[u]);
      if (s.buf1) load_raw(s.buf1, sb, i0, r1[u]);
      if (s.buf2) load_raw(s.buf2, sb, i0, r2[u]);
      if (s.comp) load_raw(s.comp, cb, i0, rc[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t gid = first + int64_t(u) * kOptThreads;
      if (gid >= total_groups) break;
      const OptimSlot s = slots[ks[u]];
      const int64_t i0 = (gid - __ldg(prefix + ks[u])) * 8;
      if (!vec[u]) {
        update_scalar<K, P, S>(s, G, h, i0, s.numel - i0 < 8 ? int(s.numel - i0) : 8);
        continue;
      }
      OptimGroup q;
      unpack8(rp[u], pb, q.p);
      unpack8(rg[u], gb, q.g);
      if (s.buf1) unpack8(r1[u], sb, q.b1);
      if (s.buf2) unpack8(r2[u], sb, q.b2);
      if (s.comp) unpack8(rc[u], cb, q.c);
      optim_update_codes<K, P, S>(q, s, G, h, i0);
      store8(s.param, pb, i0, q.p);
      if (s.buf1) store8(s.buf1, sb, i0, q.b1);
      if (s.buf2) store8(s.buf2, sb, i0, q.b2);
      if (s.comp) store8(s.comp, cb, i0, q.c);
    }
  }
}

// One launch of the kernel with U groups per thread batch and MinBlocks in its launch
// bounds, for every (optimizer, parameter dtype, state dtype) of dispatch_optim.
template <int U, int MinBlocks>
cudaError_t launch(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                   const OptimTypes& types, const OptimHyper& hyper, int64_t max_blocks, cudaStream_t stream) {
  const int64_t per_block = int64_t(U) * kOptThreads;
  const int64_t blocks_needed = (total_groups + per_block - 1) / per_block;
  const unsigned blocks = unsigned(blocks_needed < max_blocks ? blocks_needed : max_blocks);
  const bool known = dispatch_optim(hyper.kind, types.param, types.state, [&]<OptimKind K, ElemType P, ElemType S>() {
    optim_kernel<K, P, S, U, MinBlocks><<<blocks, kOptThreads, 0, stream>>>(slots, group_prefix, num_slots,
                                                                            total_groups, types.grad, hyper);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace optim_detail
}  // namespace largeout::cuda
