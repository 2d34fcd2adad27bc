// CUDA fused optimizer step: one launch for a list of tensors; each thread updates a
// group of 8 consecutive elements with the rule of kernels/optim_step.h (so the bits
// equal the CPU path's), loading and storing whole groups with vector accesses when
// the tensor is 16-byte aligned.
#include "kernels/cuda/optim_step_cuda.h"

#include <algorithm>
#include <cstdlib>
#include <string>

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

// ------------------------------------------------------------------ staged (sm_90)
// Opt-in (LARGEOUT_OPTIM_KERNEL=staged, sm_90 and newer; not the default until measured).
// The kernel above keeps only one 8-element group per thread in flight (registers run
// out first: bench/NOTES.md); here one producer warp streams chunks of 2048 elements of
// every tensor of a slot into a ring of shared-memory stages with bulk copies, so each
// block has several chunks in flight without registers; 256 computing threads update
// one group of 8 each from shared memory and store to global memory. A chunk's elements
// past the last multiple of 16 (and whole chunks of slots with a tensor not 16-byte
// aligned) take the per-element path from global memory.
constexpr int kStChunk = 2048;  // elements per chunk: 256 threads x 8
constexpr int kStCons = 256;
constexpr int kStThreads = kStCons + 32;

struct StageHeader {
  int64_t i0;      // first element of the chunk in its slot
  int32_t slot;
  int32_t staged;  // elements of the chunk in shared memory (a multiple of 16)
};

__device__ __forceinline__ uint32_t st_smem(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

template <OptimKind K, ElemType P, ElemType S>
__global__ void __launch_bounds__(kStThreads, 1)
optim_kernel_staged(const OptimSlot* __restrict__ slots, const int64_t* __restrict__ prefix, int num_slots,
                    int64_t total_chunks, ElemType G, OptimHyper h, int stages, int stage_bytes, int has_buf1,
                    int has_buf2, int has_comp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr ElemType C = comp_type(P);
  extern __shared__ __align__(128) uint8_t st_raw[];
  uint8_t* ring = st_raw;  // [stages][stage_bytes]: param | grad | buf1 | buf2 | comp
  StageHeader* hdr = reinterpret_cast<StageHeader*>(ring + int64_t(stages) * stage_bytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(hdr + stages);
  uint64_t* empty = full + stages;
  const int eg = elem_bytes(G);
  // Offsets of the tensors in a stage (bytes).
  const int o_grad = kStChunk * elem_bytes(P);
  const int o_b1 = o_grad + kStChunk * eg;
  const int o_b2 = o_b1 + (has_buf1 ? kStChunk * elem_bytes(S) : 0);
  const int o_c = o_b2 + (has_buf2 ? kStChunk * elem_bytes(S) : 0);
  if (threadIdx.x == 0) {
    for (int st = 0; st < stages; ++st) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(st_smem(&full[st])));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(st_smem(&empty[st])), "r"(kStCons / 32));
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  // Waits for the barrier's phase; no progress for ~2^32 cycles is a bug: trap.
  auto wait = [](uint64_t* bar, uint32_t parity) {
    uint32_t ok = 0;
    const long long start = clock64();
    while (!ok) {
      asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.b32 %0, 1, 0, p;\n}"
                   : "=r"(ok)
                   : "r"(st_smem(bar)), "r"(parity)
                   : "memory");
      if (!ok && clock64() - start > (1ll << 32)) __trap();
    }
  };
  // Chunk c of the launch -> (slot, first element); every thread walks the same sequence.
  auto chunks_of = [&](int k) { return (prefix[k + 1] - prefix[k] + kStChunk / 8 - 1) / (kStChunk / 8); };
  int64_t all_chunks = 0;  // (total_chunks from the host is only a bound, for the grid)
  for (int k = 0; k < num_slots; ++k) all_chunks += chunks_of(k);
  total_chunks = all_chunks;

  if (threadIdx.x >= kStCons) {  // producer warp (one lane issues)
    if (threadIdx.x == kStCons) {
      int k = 0;
      int64_t first = 0;  // first chunk of slot k
      int it = 0;
      for (int64_t c = blockIdx.x; c < total_chunks; c += gridDim.x, ++it) {
        while (first + chunks_of(k) <= c) first += chunks_of(k++);
        const OptimSlot sl = slots[k];
        const int64_t i0 = (c - first) * kStChunk;
        const int64_t left = sl.numel - i0;
        auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
        const bool aligned = al(sl.param) && al(sl.grad) && (!sl.buf1 || al(sl.buf1)) && (!sl.buf2 || al(sl.buf2)) &&
                             (!sl.comp || al(sl.comp));
        // (a slot with a buffer the stage has no room for takes the per-element path)
        const bool fits = (!sl.buf1 || has_buf1) && (!sl.buf2 || has_buf2) && (!sl.comp || has_comp);
        const int staged = aligned && fits ? int((left < kStChunk ? left : kStChunk) & ~int64_t(15)) : 0;
        const int st = it % stages;
        wait(&empty[st], ((it / stages) & 1) ^ 1);
        hdr[st] = StageHeader{i0, k, staged};
        uint8_t* dst = ring + int64_t(st) * stage_bytes;
        const uint32_t bar = st_smem(&full[st]);
        uint32_t bytes = uint32_t(staged) * uint32_t(elem_bytes(P) + eg + (sl.buf1 ? elem_bytes(S) : 0) +
                                                     (sl.buf2 ? elem_bytes(S) : 0) + (sl.comp ? elem_bytes(C) : 0));
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
        auto copy = [&](int off, const void* src, int esz) {
          if (staged == 0) return;
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                           st_smem(dst + off)),
                       "l"(static_cast<const uint8_t*>(src) + i0 * esz), "r"(uint32_t(staged * esz)), "r"(bar)
                       : "memory");
        };
        copy(0, sl.param, elem_bytes(P));
        copy(o_grad, sl.grad, eg);
        if (sl.buf1) copy(o_b1, sl.buf1, elem_bytes(S));
        if (sl.buf2) copy(o_b2, sl.buf2, elem_bytes(S));
        if (sl.comp) copy(o_c, sl.comp, elem_bytes(C));
      }
    }
    return;
  }

  const int lane = threadIdx.x & 31;
  int it = 0;
  for (int64_t c = blockIdx.x; c < total_chunks; c += gridDim.x, ++it) {
    const int st = it % stages;
    wait(&full[st], (it / stages) & 1);
    const StageHeader hd = hdr[st];
    const OptimSlot sl = slots[hd.slot];
    const uint8_t* src = ring + int64_t(st) * stage_bytes;
    const int e0 = 8 * int(threadIdx.x);
    const int64_t i0 = hd.i0 + e0;
    OptimGroup q;
    const bool in_smem = e0 + 8 <= hd.staged;
    if (in_smem) {
      load8(src, P, e0, q.p);
      load8(src + o_grad, G, e0, q.g);
      if (sl.buf1) load8(src + o_b1, S, e0, q.b1);
      if (sl.buf2) load8(src + o_b2, S, e0, q.b2);
      if (sl.comp) load8(src + o_c, C, e0, q.c);
    }
    __syncwarp();
    if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(st_smem(&empty[st])) : "memory");
    if (in_smem) {
      optim_update_codes<K, P, S>(q, sl, G, h, i0);
      store8(sl.param, P, i0, q.p);
      if (sl.buf1) store8(sl.buf1, S, i0, q.b1);
      if (sl.buf2) store8(sl.buf2, S, i0, q.b2);
      if (sl.comp) store8(sl.comp, C, i0, q.c);
    } else if (i0 < sl.numel) {
      const int n = sl.numel - i0 < 8 ? int(sl.numel - i0) : 8;
      optim_update_range<K, P, S>(sl, G, h, i0, n);
    }
  }
#else
  __trap();
#endif
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
  if (const char* v = std::getenv("LARGEOUT_OPTIM_KERNEL"); v != nullptr && std::string(v) == "staged") {
    int major = 0;
    e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e != cudaSuccess) return e;
    if (major >= 9) {
      // Stage size from the launch's kind (the tensors every slot carries).
      const bool b1 = hyper.kind == OptimKind::kAdamW || hyper.momentum != 0.f;
      const bool b2 = hyper.kind == OptimKind::kAdamW;
      const bool cmp = hyper.kahan;
      const int stage_bytes = kStChunk * (elem_bytes(types.param) + elem_bytes(types.grad) +
                                          (b1 ? elem_bytes(types.state) : 0) + (b2 ? elem_bytes(types.state) : 0) +
                                          (cmp ? elem_bytes(comp_type(types.param)) : 0));
      const int stages = std::max(2, std::min(8, (96 << 10) / stage_bytes));
      const size_t smem = size_t(stages) * stage_bytes + stages * (sizeof(StageHeader) + 16);
      // Chunks: ceil(groups / 256) per slot; the host knows the group counts only through
      // the device prefix, so bound the chunk count by groups / 256 + slots.
      const int64_t total_chunks = total_groups / (kStChunk / 8) + num_slots;
      cudaError_t le = cudaSuccess;
      const bool ok = dispatch_optim(hyper.kind, types.param, types.state, [&]<OptimKind K, ElemType P, ElemType S>() {
        auto kernel = optim_kernel_staged<K, P, S>;
        le = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (le != cudaSuccess) return;
        int per_sm = 0;  // resident blocks per SM (registers and shared memory): one wave
        le = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kStThreads, smem);
        if (le != cudaSuccess) return;
        const unsigned blocks = unsigned(std::min<int64_t>(total_chunks, int64_t(sms) * std::max(1, per_sm)));
        kernel<<<blocks, kStThreads, smem, stream>>>(slots, group_prefix, num_slots, total_chunks, types.grad, hyper,
                                                     stages, stage_bytes, int(b1), int(b2), int(cmp));
      });
      if (!ok) return cudaErrorInvalidValue;
      if (le != cudaSuccess) return le;
      return cudaGetLastError();
    }
  }
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
