// CUDA fused optimizer step: one launch for a list of tensors, with the per-element rule
// of kernels/optim_step.h (so the bits equal the CPU path's). A thread updates kU groups
// of 8 consecutive elements per iteration: it issues the loads of all of them before it
// computes any, and keeps them as raw words (not unpacked codes), so that more bytes are
// in flight per thread. With one group per thread, bf16 SGD ran at 29% of copy bandwidth
// on an H200 (bench/NOTES.md). Groups that are partial, not 16-byte aligned or not in one
// slot with the thread's others take the per-group paths.
#include "kernels/cuda/optim_step_cuda.h"
#include "kernels/cuda/vec_store.cuh"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>

namespace largeout::cuda {
namespace {

constexpr int kOptThreads = 256;

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The raw words of a group of 8 elements of `bytes` bytes each (8, 16 or 32 bytes).
struct Raw8 {
  uint4 a, b;
};

__device__ __forceinline__ Raw8 load_raw8(const void* base, int bytes, int64_t i0) {
  Raw8 r{};
  const uint8_t* p = static_cast<const uint8_t*>(base) + i0 * bytes;
  if (bytes == 4) {
    r.a = reinterpret_cast<const uint4*>(p)[0];
    r.b = reinterpret_cast<const uint4*>(p)[1];
  } else if (bytes == 2) {
    r.a = *reinterpret_cast<const uint4*>(p);
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    r.a.x = v.x, r.a.y = v.y;
  }
  return r;
}

__device__ __forceinline__ void unpack8(const Raw8& r, int bytes, uint32_t out[8]) {
  if (bytes == 4) {
    out[0] = r.a.x; out[1] = r.a.y; out[2] = r.a.z; out[3] = r.a.w;
    out[4] = r.b.x; out[5] = r.b.y; out[6] = r.b.z; out[7] = r.b.w;
  } else if (bytes == 2) {
    const uint32_t w[4] = {r.a.x, r.a.y, r.a.z, r.a.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[2 * k] = w[k] & 0xffffu;
      out[2 * k + 1] = w[k] >> 16;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[k] = (r.a.x >> (8 * k)) & 0xffu;
      out[4 + k] = (r.a.y >> (8 * k)) & 0xffu;
    }
  }
}

// (One st.global.v4 / v2 per 16 / 8 bytes, kernels/cuda/vec_store.cuh: assigned through a
// uint4 pointer, all of AdamW's and most of SGD's group stores compiled to four 4-byte
// stores, 4x the store instructions and L2 write requests.)
__device__ __forceinline__ void store8(void* base, ElemType t, int64_t i0, const uint32_t c[8]) {
  switch (elem_bytes(t)) {
    case 4: {
      uint4* q = reinterpret_cast<uint4*>(static_cast<uint32_t*>(base) + i0);
      st_global_v4(q, make_uint4(c[0], c[1], c[2], c[3]));
      st_global_v4(q + 1, make_uint4(c[4], c[5], c[6], c[7]));
      break;
    }
    case 2: {
      st_global_v4(static_cast<uint16_t*>(base) + i0,
                   make_uint4(c[0] | (c[1] << 16), c[2] | (c[3] << 16), c[4] | (c[5] << 16), c[6] | (c[7] << 16)));
      break;
    }
    default: {
      st_global_v2(static_cast<uint8_t*>(base) + i0,
                   make_uint2(pack_bytes4(c[0], c[1], c[2], c[3]), pack_bytes4(c[4], c[5], c[6], c[7])));
      break;
    }
  }
}

__device__ __forceinline__ bool slot_aligned(const OptimSlot& s) {
  return aligned16(s.param) && aligned16(s.grad) && (!s.buf1 || aligned16(s.buf1)) && (!s.buf2 || aligned16(s.buf2)) &&
         (!s.comp || aligned16(s.comp));
}

// Stores the codes of a whole, aligned group to every tensor of slot s.
template <ElemType P, ElemType S>
__device__ __forceinline__ void store_group(const OptimSlot& s, int64_t i0, const OptimGroup& q) {
  store8(s.param, P, i0, q.p);
  if (s.buf1) store8(s.buf1, S, i0, q.b1);
  if (s.buf2) store8(s.buf2, S, i0, q.b2);
  if (s.comp) store8(s.comp, comp_type(P), i0, q.c);
}

// Unpacks the raw words of one group, updates it and stores it.
template <OptimKind K, ElemType P, ElemType S, bool kScaled>
__device__ __forceinline__ void update_raw(const OptimSlot& s, ElemType G, const OptimHyper& h, int64_t i0,
                                           const Raw8& rp, const Raw8& rg, const Raw8& r1, const Raw8& r2,
                                           const Raw8& rc, const GroupRandom* pre_p = nullptr) {
  constexpr ElemType C = comp_type(P);
  OptimGroup q;
  unpack8(rp, elem_bytes(P), q.p);
  unpack8(rg, elem_bytes(G), q.g);
  if (s.buf1) unpack8(r1, elem_bytes(S), q.b1);
  if (s.buf2) unpack8(r2, elem_bytes(S), q.b2);
  if (s.comp) unpack8(rc, elem_bytes(C), q.c);
  optim_update_codes<K, P, S, kScaled>(q, s, G, h, i0, pre_p);
  store_group<P, S>(s, i0, q);
}

// The raw words of the group at element i0 of every tensor of slot s.
template <ElemType P, ElemType S>
__device__ __forceinline__ void load_group(const OptimSlot& s, ElemType G, int64_t i0, Raw8& rp, Raw8& rg, Raw8& r1,
                                           Raw8& r2, Raw8& rc) {
  rp = load_raw8(s.param, elem_bytes(P), i0);
  rg = load_raw8(s.grad, elem_bytes(G), i0);
  if (s.buf1) r1 = load_raw8(s.buf1, elem_bytes(S), i0);
  if (s.buf2) r2 = load_raw8(s.buf2, elem_bytes(S), i0);
  if (s.comp) rc = load_raw8(s.comp, elem_bytes(comp_type(P)), i0);
}

// Asks L2 for the lines of the group at element i0 of every tensor of slot s (a hint: no
// registers held, nothing waited on), one iteration before the group's loads.
__device__ __forceinline__ void prefetch_l2(const void* base, int bytes, int64_t i0) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const uint8_t*>(base) + i0 * bytes));
}
template <ElemType P, ElemType S>
__device__ __forceinline__ void prefetch_group(const OptimSlot& s, ElemType G, int64_t i0) {
  prefetch_l2(s.param, elem_bytes(P), i0);
  prefetch_l2(s.grad, elem_bytes(G), i0);
  if (s.buf1) prefetch_l2(s.buf1, elem_bytes(S), i0);
  if (s.buf2) prefetch_l2(s.buf2, elem_bytes(S), i0);
  if (s.comp) prefetch_l2(s.comp, elem_bytes(comp_type(P)), i0);
}

// One group by itself, each tensor unpacked as it is loaded (the fewest registers: the
// 16-bit kU = 1 kernels), or per element where partial or not 16-byte aligned.
template <OptimKind K, ElemType P, ElemType S, bool kScaled>
__device__ __forceinline__ void update_one(const OptimSlot& s, ElemType G, const OptimHyper& h, int64_t i0) {
  constexpr ElemType C = comp_type(P);
  const int n = s.numel - i0 < 8 ? int(s.numel - i0) : 8;
  if (n < 8 || !slot_aligned(s)) {
    optim_update_range<K, P, S, kScaled>(s, G, h, i0, n);
    return;
  }
  OptimGroup q;
  unpack8(load_raw8(s.param, elem_bytes(P), i0), elem_bytes(P), q.p);
  unpack8(load_raw8(s.grad, elem_bytes(G), i0), elem_bytes(G), q.g);
  if (s.buf1) unpack8(load_raw8(s.buf1, elem_bytes(S), i0), elem_bytes(S), q.b1);
  if (s.buf2) unpack8(load_raw8(s.buf2, elem_bytes(S), i0), elem_bytes(S), q.b2);
  if (s.comp) unpack8(load_raw8(s.comp, elem_bytes(C), i0), elem_bytes(C), q.c);
  optim_update_codes<K, P, S, kScaled>(q, s, G, h, i0);
  store_group<P, S>(s, i0, q);
}

// Which buffers the slots of a launch carry, as a template argument: SGD's kernels are
// specialized (the compiler drops what a launch does not carry: registers, not memory
// accesses, bounded the bytes in flight); AdamW's kernel tests the pointers at run time
// (specialized AdamW kernels measured slower, bench/NOTES.md).
enum class Bufs : int { kNone, kBuf1, kComp, kBoth, kRuntime };

// (Tried and removed, session 17: a staged kernel in which each thread copies its next
// groups into a ring of shared-memory stages by cp.async while it updates the current one,
// kept in commit 20b8ed7. On an H100 it was 2x slower for bf16 SGD, equal for AdamW with
// bf16 state and 12% slower with fp32 state: the per-element code, not the loads' latency,
// bounds these kernels. bench/NOTES.md, session 17. A prefetch into L2 one iteration ahead,
// which holds no registers, did pay for the one-group-per-thread kernels: l2_prefetch below.)

// Resident blocks per SM the kernel is compiled for (its register budget: 128 per thread
// for 2, 64 for 4). SGD without buffers: 4 (more warps to issue from; bf16 with SR 1.39 ->
// 1.31 ms, 78% -> 83% of copy on an H200, fp8 3.76 -> 3.14 ms); with state, 2 (4 spills and
// measured slower: momentum 3.47 -> 4.06 ms, AdamW with fp32 state 6.05 -> 7.05 ms;
// bench/results/optim_blocks_h200.json).
constexpr int resident_blocks(Bufs b) { return b == Bufs::kNone ? 4 : 2; }

// Groups per thread and iteration: 64-128 bytes of loads in flight per thread at 512
// resident threads per SM (what the H200's bandwidth-latency product asks for) where that
// fits in 128 registers without spills; half as many at 1024 resident threads (4 blocks).
// The gradient is taken as bf16-sized below fp32 parameters.
template <OptimKind K, ElemType P, ElemType S, Bufs kBufs, int kBlocks>
constexpr int groups_per_thread() {
  if constexpr (kBufs == Bufs::kRuntime) {
    return 1;
  } else {
    constexpr bool b1 = kBufs == Bufs::kBuf1 || kBufs == Bufs::kBoth;
    constexpr bool comp = kBufs == Bufs::kComp || kBufs == Bufs::kBoth;
    constexpr int load_bytes = elem_bytes(P) + (P == ElemType::kF32 ? 4 : 2) + (b1 ? elem_bytes(S) : 0) +
                               (comp ? elem_bytes(comp_type(P)) : 0);
    constexpr int u = load_bytes <= 4 ? 4 : load_bytes <= 6 ? 2 : 1;
    return u * 2 / kBlocks > 0 ? u * 2 / kBlocks : 1;  // the same bytes in flight per SM
  }
}

// The gradient type the kernels are specialized for: the parameter's own (torch's), bf16
// for fp8 parameters (what largeout.nn's fp8 layers produce). A launch with another
// gradient type takes the kernel that reads the type at run time (kGradRuntime, with
// kBufs = kRuntime: one instance per parameter and state type). Known at compile time, the
// gradient's unpacking, decoding and addresses fold into the loads (at run time they were a
// switch and register copies per group: ~4 of the fp8 SGD step's 49 instructions per
// element, bench/NOTES.md, session 33).
constexpr int kGradRuntime = -1;
constexpr ElemType natural_grad(ElemType p) { return comp_type(p); }

// A block iteration covers kU * 256 consecutive groups of the launch; thread t takes
// groups t, t + 256, ... of it (coalesced). kScaled: every slot's parameter has a row
// scale (fp8 parameters of largeout.nn layers with weight_scale; kBufs = kRuntime). kGrad:
// the gradient's ElemType, or kGradRuntime (then grad_type says it).
template <OptimKind K, ElemType P, ElemType S, Bufs kBufs, int kBlocks, bool kScaled = false,
          int kGrad = int(natural_grad(P))>
__global__ void __launch_bounds__(kOptThreads, kBlocks) optim_kernel(const OptimSlot* __restrict__ slots,
                                                                   const int64_t* __restrict__ prefix,
                                                                   int64_t total_groups, ElemType grad_type,
                                                                   OptimHyper h, int prefetch) {
  const ElemType G = kGrad == kGradRuntime ? grad_type : ElemType(kGrad);
  constexpr int kU = groups_per_thread<K, P, S, kBufs, kBlocks>();
  constexpr int64_t kTile = int64_t(kU) * kOptThreads;
  auto slot = [&](int k) {  // slot k with the pointers the launch does not carry known null
    OptimSlot s = slots[k];
    if constexpr (kBufs == Bufs::kNone || kBufs == Bufs::kComp) s.buf1 = nullptr;
    if constexpr (K != OptimKind::kAdamW) s.buf2 = nullptr;
    if constexpr (kBufs == Bufs::kNone || kBufs == Bufs::kBuf1) s.comp = nullptr;
    // ...and the ones it carries known non-null (the launcher picks kBufs from the lists
    // every slot has: a per-element test of the pointer was a branch per element in SASS)
    if constexpr (kBufs == Bufs::kBuf1 || kBufs == Bufs::kBoth || K == OptimKind::kAdamW) __builtin_assume(s.buf1 != nullptr);
    if constexpr (K == OptimKind::kAdamW) __builtin_assume(s.buf2 != nullptr);
    if constexpr (kBufs == Bufs::kComp || kBufs == Bufs::kBoth) __builtin_assume(s.comp != nullptr);
    return s;
  };
  // The grid loop, with the rounding mode a constant in each copy (hk: h with `stochastic`
  // set to the value its branch tested, which the compiler then folds through every update:
  // in one loop, each group tested the mode and set the random words that rounding to
  // nearest does not read, ~11 instructions of the fp8 SGD step's ~300 per group). Two
  // copies for fp8 SGD without buffers only: fp8 momentum's kernel went from 80 to 96
  // registers with them, 3 -> 2 resident blocks per SM, 2.32 -> 2.44 ms on an H100 (fp8
  // SGD 1.54 -> 1.35 ms; bench/NOTES.md, session 34).
  constexpr bool kSplitMode = (P == ElemType::kE4M3 || P == ElemType::kE5M2) && kBufs == Bufs::kNone;
  auto grid_loop = [&](const OptimHyper& hk) {
    // Each thread's groups only move forward, so its slot index does too (a short forward
    // scan of the prefix instead of a search per group). The current slot's first and end
    // group stay in registers until the thread leaves it: the slot's own load depends on
    // nothing loaded in the iteration.
    int k = 0;
    int64_t first = __ldg(prefix), end = __ldg(prefix + 1);
    for (int64_t g0 = int64_t(blockIdx.x) * kTile + threadIdx.x; g0 < total_groups;
         g0 += int64_t(gridDim.x) * kTile) {
      if (end <= g0) {
        do {
          ++k;
          end = __ldg(prefix + k + 1);
        } while (end <= g0);  // also skips empty slots
        first = __ldg(prefix + k);
      }
      const OptimSlot s = slot(k);
      const int64_t glast = g0 + (kU - 1) * kOptThreads;
      if (prefetch > 0) {  // the groups `prefetch` iterations on into L2 (where they are in this slot)
        const int64_t gn = g0 + prefetch * int64_t(gridDim.x) * kTile;
#pragma unroll
        for (int u = 0; u < kU; ++u)
          if (gn + u * kOptThreads < end) prefetch_group<P, S>(s, G, (gn + u * kOptThreads - first) * 8);
      }
      // (kU = 1: AdamW with 16-bit parameters takes update_one below, which measured 5-7%
      // faster; fp32 parameters and the specialized SGD kernels this path: AdamW fp32 1.3-1.8x
      // faster, SGD momentum + Kahan 6.13 vs 6.76 ms on an H200, bench/NOTES.md.)
      if ((kU > 1 || P == ElemType::kF32 || kBufs != Bufs::kRuntime) && glast < end &&
          (glast - first) * 8 + 8 <= s.numel && slot_aligned(s)) {
        // All kU groups whole, in this slot and aligned: the loads of all, then the updates.
        Raw8 rp[kU], rg[kU], r1[kU], r2[kU], rc[kU];
#pragma unroll
        for (int u = 0; u < kU; ++u)
          load_group<P, S>(s, G, (g0 + u * kOptThreads - first) * 8, rp[u], rg[u], r1[u], r2[u], rc[u]);
        if constexpr (kSplitMode && kU == 2) {
          // fp8 SGD, stochastic (a constant in this copy of the loop): the four Philox blocks of
          // the two groups drawn together right after the loads, so that their rounds overlap the
          // loads' latency and each round key read serves 8 XORs instead of 4 (before, each group
          // drew its two right before its rounding: 1.258 -> 1.228 ms on an H100, 80.6% -> 82.7%
          // of copy; bench/NOTES.md, session 35).
          if (hk.stochastic) {
            GroupRandom pre[2];
            const int64_t ia = (g0 - first) * 8, ib = (g0 + kOptThreads - first) * 8;
            GroupRandom::fill_pair32(hk, uint64_t(s.base + ia) >> 3, uint64_t(s.base + ib) >> 3, 0, pre[0], pre[1]);
            update_raw<K, P, S, kScaled>(s, G, hk, ia, rp[0], rg[0], r1[0], r2[0], rc[0], &pre[0]);
            update_raw<K, P, S, kScaled>(s, G, hk, ib, rp[1], rg[1], r1[1], r2[1], rc[1], &pre[1]);
            continue;
          }
        }
#pragma unroll
        for (int u = 0; u < kU; ++u)
          update_raw<K, P, S, kScaled>(s, G, hk, (g0 + u * kOptThreads - first) * 8, rp[u], rg[u], r1[u], r2[u], rc[u]);
        continue;
      }
      // One group at a time (kU = 1, a slot's end, a partial or an unaligned group). With
      // kU = 1 the group is g0, in slot k already loaded (end > g0): no second search and
      // load of the slot, whose latency the group's loads waited on (bench/NOTES.md, session 32).
      if constexpr (kU == 1) {
        update_one<K, P, S, kScaled>(s, G, hk, (g0 - first) * 8);
        continue;
      }
      int kk = k;
      for (int u = 0; u < kU; ++u) {
        const int64_t g = g0 + u * kOptThreads;
        if (g >= total_groups) break;
        while (__ldg(prefix + kk + 1) <= g) ++kk;
        const OptimSlot sg = slot(kk);
        update_one<K, P, S, kScaled>(sg, G, hk, (g - __ldg(prefix + kk)) * 8);
      }
    }
  };
  if constexpr (!kSplitMode) {
    grid_loop(h);
  } else if (h.stochastic) {
    OptimHyper hs = h;
    hs.stochastic = true;
    grid_loop(hs);
  } else {
    OptimHyper hn = h;
    hn.stochastic = false;
    grid_loop(hn);
  }
}

// One thread per group of 8 consecutive elements, as the optimizers round them: the group
// rounding against the device's per-element rule, and that rule against the specification.
template <ElemType T>
__global__ void sr_rule_mismatch_kernel(const float* __restrict__ x, const uint32_t* __restrict__ rnd, int64_t n,
                                        unsigned long long* bad) {
  const int64_t i0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (i0 >= n) return;
  const SrFormat f = sr_format_of(T);
  unsigned long long count = group_rule_mismatches<T>(x, rnd, n, i0);
  for (int64_t i = i0; i < i0 + 8 && i < n; ++i)
    count += sr_round_bits_fast(x[i], f, rnd[i]) != sr_round_bits(x[i], f, rnd[i]);
  if (count) atomicAdd(bad, count);
}

// One thread per group of 8 consecutive elements: sqrt_group(a) and div_group(a, b), as
// AdamW's step takes them.
__global__ void group_sqrt_div_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t groups,
                                      float* __restrict__ sqrt_out, float* __restrict__ div_out) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  float x[8], y[8], s[8], q[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    x[j] = a[g * 8 + j];
    y[j] = b[g * 8 + j];
  }
  sqrt_group(x, s);
  div_group(x, y, q);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    sqrt_out[g * 8 + j] = s[j];
    div_out[g * 8 + j] = q[j];
  }
}

}  // namespace

cudaError_t group_sqrt_div(const float* a, const float* b, int64_t n, float* sqrt_out, float* div_out,
                           cudaStream_t stream) {
  if (n % 8 != 0) return cudaErrorInvalidValue;
  const int64_t groups = n / 8;
  if (groups == 0) return cudaSuccess;
  group_sqrt_div_kernel<<<unsigned((groups + 255) / 256), 256, 0, stream>>>(a, b, groups, sqrt_out, div_out);
  return cudaGetLastError();
}

cudaError_t sr_rule_mismatches(const float* x, const uint32_t* rnd, int64_t n, ElemType t, unsigned long long* bad,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = unsigned((n + 8 * 256 - 1) / (8 * 256));
  auto launch = [&]<ElemType T>() { sr_rule_mismatch_kernel<T><<<blocks, 256, 0, stream>>>(x, rnd, n, bad); };
  switch (t) {
    case ElemType::kBF16: launch.template operator()<ElemType::kBF16>(); break;
    case ElemType::kF16: launch.template operator()<ElemType::kF16>(); break;
    case ElemType::kE4M3: launch.template operator()<ElemType::kE4M3>(); break;
    case ElemType::kE5M2: launch.template operator()<ElemType::kE5M2>(); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// The value of environment variable `name` where it is a decimal number in [lo, hi] (read at
// every launch, so that a benchmark can switch it), else `fallback`.
static int env_knob(const char* name, int lo, int hi, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return fallback;
  long n = 0;
  for (const char* c = v; *c != '\0'; ++c) {
    if (*c < '0' || *c > '9' || n > hi) return fallback;
    n = n * 10 + (*c - '0');
  }
  return n >= lo && n <= hi ? int(n) : fallback;
}

// Whether every thread asks L2 for its next iteration's groups while it updates the current
// one. Measured on an H100 (bench/NOTES.md, session 20; optim_s20b_h100.json against
// optim_s20b_prefetch_off_h100.json, same machine): it pays in the kernels that update one
// group per thread through update_one (AdamW on 16-bit parameters: bf16 state 5.69 -> 4.70 ms,
// 63% -> 76% of copy; fp32 state 6.94 -> 6.59; nearest 5.57 -> 4.42), which have only 16
// bytes per tensor in flight per thread. Elsewhere it hurt or made no difference: SGD without
// buffers (4 groups per thread in flight; bf16 1.71 -> 2.07, optim_prefetch_{off,a,b}_s20_h100.json),
// AdamW on fp32 parameters (the raw-words path; 7.97 -> 8.48), momentum and Kahan (within
// noise), so those kernels go without. AdamW on fp8 parameters and the row-scaled fp8 kernels
// take the same one-group path and get it too (not timed separately). LARGEOUT_OPTIM_L2_PREFETCH=0 / 1
// overrides the choice (read at every launch, so that a benchmark can switch it);
// LARGEOUT_OPTIM_L2_PREFETCH=2 or 3 prefetches that many iterations ahead instead of one
// (session 33, on the SGD kernels: fp8 no faster, fp8 momentum and bf16 slower).
static int l2_prefetch(bool one_group_per_thread) {
  return env_knob("LARGEOUT_OPTIM_L2_PREFETCH", 0, 3, one_group_per_thread ? 1 : 0);
}

// Blocks per SM of a launch's grid (at most; each block strides over the groups):
// LARGEOUT_OPTIM_GRID_PER_SM (1-16) overrides the default of 8, which is 2-4 times the blocks
// that are resident at once. One wave (4 or 2) gained nothing beyond the run-to-run spread on
// an H100 (bench/NOTES.md, session 34).
static int grid_per_sm() { return env_knob("LARGEOUT_OPTIM_GRID_PER_SM", 1, 16, 8); }

cudaError_t optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                       const OptimTypes& types, const OptimHyper& hyper, bool has_buf1, bool has_comp,
                       bool scaled, cudaStream_t stream) {
  if (total_groups == 0 || num_slots == 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  bool unscalable = false;
  const bool known = dispatch_optim(hyper.kind, types.param, types.state, [&]<OptimKind K, ElemType P, ElemType S>() {
    auto pick = [&]<Bufs kBufs>() {
      constexpr int kBlocks = resident_blocks(kBufs);
      return std::make_pair(optim_kernel<K, P, S, kBufs, kBlocks>, groups_per_thread<K, P, S, kBufs, kBlocks>());
    };
    std::pair<void (*)(const OptimSlot*, const int64_t*, int64_t, ElemType, OptimHyper, int), int> kernel_u;
    const bool natural = types.grad == natural_grad(P);
    if (scaled) {  // (the op allows row scales on fp8 parameters only)
      if constexpr (scalable(P)) {
        kernel_u = std::make_pair(natural ? optim_kernel<K, P, S, Bufs::kRuntime, 2, true>
                                          : optim_kernel<K, P, S, Bufs::kRuntime, 2, true, kGradRuntime>,
                                  1);
      } else {
        unscalable = true;
        return;
      }
    } else if (!natural) {  // (a gradient type other than the parameter's; bf16 for fp8)
      kernel_u = std::make_pair(optim_kernel<K, P, S, Bufs::kRuntime, 2, false, kGradRuntime>, 1);
    } else if constexpr (K == OptimKind::kSGD) {
      kernel_u = has_buf1 ? (has_comp ? pick.template operator()<Bufs::kBoth>() : pick.template operator()<Bufs::kBuf1>())
                          : (has_comp ? pick.template operator()<Bufs::kComp>() : pick.template operator()<Bufs::kNone>());
    } else {
      kernel_u = pick.template operator()<Bufs::kRuntime>();
    }
    const auto [kernel, kU] = kernel_u;
    // (The kernels that take update_one for whole groups: kBufs = kRuntime, 16- or 8-bit parameters.)
    const bool prefetch_default = (scaled || !natural || K == OptimKind::kAdamW) && P != ElemType::kF32;
    const int64_t blocks_needed = (total_groups + kU * kOptThreads - 1) / (kU * kOptThreads);
    const int64_t cap = int64_t(sms) * grid_per_sm();
    kernel<<<unsigned(std::min(blocks_needed, cap)), kOptThreads, 0, stream>>>(slots, group_prefix, total_groups,
                                                                             types.grad, hyper,
                                                                             l2_prefetch(prefetch_default));
  });
  if (!known || unscalable) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace largeout::cuda
