// CUDA fused optimizer step: one launch for a list of tensors; each thread updates a
// group of 8 consecutive elements with the rule of kernels/optim_step.h (so the bits
// equal the CPU path's), loading and storing whole groups with vector accesses when
// the tensor is 16-byte aligned.
#include "kernels/cuda/optim_step_cuda.h"

namespace largeout::cuda {
namespace {

constexpr int kOptThreads = 256;

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ void load8(const void* base, ElemType t, int64_t i0, uint32_t out[8]) {
  switch (elem_bytes(t)) {
    case 4: {
      const uint4* q = reinterpret_cast<const uint4*>(static_cast<const uint32_t*>(base) + i0);
      const uint4 a = q[0], b = q[1];
      out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
      out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
      break;
    }
    case 2: {
      const uint4 a = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + i0);
      const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        out[2 * k] = w[k] & 0xffffu;
        out[2 * k + 1] = w[k] >> 16;
      }
      break;
    }
    default: {
      const uint2 a = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(base) + i0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        out[k] = (a.x >> (8 * k)) & 0xffu;
        out[4 + k] = (a.y >> (8 * k)) & 0xffu;
      }
      break;
    }
  }
}

__device__ __forceinline__ void store8(void* base, ElemType t, int64_t i0, const uint32_t c[8]) {
  switch (elem_bytes(t)) {
    case 4: {
      uint4* q = reinterpret_cast<uint4*>(static_cast<uint32_t*>(base) + i0);
      q[0] = make_uint4(c[0], c[1], c[2], c[3]);
      q[1] = make_uint4(c[4], c[5], c[6], c[7]);
      break;
    }
    case 2: {
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i0) =
          make_uint4(c[0] | (c[1] << 16), c[2] | (c[3] << 16), c[4] | (c[5] << 16), c[6] | (c[7] << 16));
      break;
    }
    default: {
      *reinterpret_cast<uint2*>(static_cast<uint8_t*>(base) + i0) =
          make_uint2(c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24), c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24));
      break;
    }
  }
}

template <OptimKind K, ElemType P, ElemType S>
__global__ void __launch_bounds__(kOptThreads, 2) optim_kernel(const OptimSlot* __restrict__ slots,
                                                             const int64_t* __restrict__ prefix, int num_slots,
                                                             int64_t total_groups, ElemType G, OptimHyper h) {
  constexpr ElemType C = comp_type(P);
  // Grid-stride over groups of 8; each thread's groups only move forward, so its slot
  // index does too (a short forward scan of the prefix instead of a search per group).
  int k = 0;
  for (int64_t gid = int64_t(blockIdx.x) * kOptThreads + threadIdx.x; gid < total_groups;
       gid += int64_t(gridDim.x) * kOptThreads) {
    while (__ldg(prefix + k + 1) <= gid) ++k;  // also skips empty slots
    const OptimSlot s = slots[k];
    const int64_t i0 = (gid - prefix[k]) * 8;
    const int n = s.numel - i0 < 8 ? int(s.numel - i0) : 8;
    const bool vec = n == 8 && aligned16(s.param) && aligned16(s.grad) && (!s.buf1 || aligned16(s.buf1)) &&
                     (!s.buf2 || aligned16(s.buf2)) && (!s.comp || aligned16(s.comp));
    if (!vec) {
      optim_update_range<K, P, S>(s, G, h, i0, n);
      continue;
    }
    OptimGroup q;
    load8(s.param, P, i0, q.p);
    load8(s.grad, G, i0, q.g);
    if (s.buf1) load8(s.buf1, S, i0, q.b1);
    if (s.buf2) load8(s.buf2, S, i0, q.b2);
    if (s.comp) load8(s.comp, C, i0, q.c);
    optim_update_codes<K, P, S>(q, s, G, h, i0);
    store8(s.param, P, i0, q.p);
    if (s.buf1) store8(s.buf1, S, i0, q.b1);
    if (s.buf2) store8(s.buf2, S, i0, q.b2);
    if (s.comp) store8(s.comp, C, i0, q.c);
  }
}

}  // namespace

cudaError_t optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                       const OptimTypes& types, const OptimHyper& hyper, cudaStream_t stream) {
  if (total_groups == 0 || num_slots == 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  const int64_t blocks_needed = (total_groups + kOptThreads - 1) / kOptThreads;
  const int64_t cap = int64_t(sms) * 8;
  const unsigned blocks = unsigned(blocks_needed < cap ? blocks_needed : cap);
  const bool known = dispatch_optim(hyper.kind, types.param, types.state, [&]<OptimKind K, ElemType P, ElemType S>() {
    optim_kernel<K, P, S><<<blocks, kOptThreads, 0, stream>>>(slots, group_prefix, num_slots, total_groups,
                                                             types.grad, hyper);
  });
  if (!known) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace largeout::cuda
