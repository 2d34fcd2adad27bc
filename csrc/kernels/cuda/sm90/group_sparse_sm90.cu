// Hopper kernels of the group-shared fixed fan-in layer (compiled for sm_90a only).
//
// Every kernel runs 3 warpgroups: warpgroup 0 loads (TMA for weights and indices,
// plain or cp.async loads where TMA cannot describe the tensor: dY and y have a row
// stride of L elements, and L may be odd), warpgroups 1 and 2 compute on tensor cores
// (wgmma) and write results. Stages of shared memory pass from loader to computers
// through full/empty mbarriers.
//
// forward   CTA = (64 batch rows, a range of groups). x^T of its 64 rows stays in shared
//           memory (H x 128 bytes); the K shared inputs of a group are gathered from it
//           straight into wgmma A fragments with ldmatrix (each lane addresses one row),
//           W_g comes by TMA; D[64, G] = X_g W_g^T, + bias, stored to y.
// dW        CTA = a range of groups, all batch rows. Per (group, 64 batch rows): X_g^T
//           gathered by cp.async from x^T (a workspace) as A [K, 64], dY tile as an
//           MN-major B [64, G]; D[K, G] accumulates over the batch; dbias is summed by
//           the loader from the dY values it stages.
// dx        CTA = (32 batch rows, a range of groups). P^T[K, 32] = W_g^T dY_g^T with A
//           from W (ldmatrix.trans) and B = the dY tile; P is added into an fp32
//           accumulator [H, 32] in shared memory, one group at a time (indices are unique
//           within a group, so the two computing warpgroups never collide; a barrier
//           separates groups). Partials of group ranges are summed in a fixed order.
// fp8 weights (kW8; bf16 x and dY): the forward and dx v2 load each weight stage as codes
// and warps 1-3 of the loader warpgroup upcast it in place (upcast_stages); dx v3's
// expanding warpgroup upcasts the codes it reads. No bf16 copy of the weight is made.
// All results are deterministic.
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/group_sparse_dx_reduce.h"
#include "kernels/cuda/sm90/group_sparse_sm90.h"
#include "kernels/cuda/sm90/ptx.cuh"
#include "kernels/stochastic_round.h"

#include <cuda_fp8.h>

namespace largeout::cuda::sm90 {
namespace {

constexpr int kThreads = 384;  // loader warpgroup + 2 computing warpgroups
constexpr int kKC = 64;        // fan-in columns per weight box (one 128-byte swizzle row)
constexpr int kMaxStages = 8;
constexpr int kSmemSlack = 1024;  // dynamic shared memory is aligned up to 1024 bytes in-kernel

template <class T> struct TypeTag { using type = T; };

__host__ __device__ constexpr int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// fp8 weights (the forward, dx v2 and dx v3 with kW8): bf16 bits of the two fp8 codes in the low
// 16 bits of `codes` (the first in bits 0-7; e4m3fn or e5m2), times `scale` where kScaled.
// The bits of largeout's fp8_to_bf16 op (fp8_to_bf16_bits / fp8_to_bf16_bits_scaled) for
// every code but NaN (a NaN code gives a NaN, not necessarily of the same pattern): every
// fp8 value is an fp16 value (one cvt for both), and a power-of-two scale is exact.
template <bool kScaled>
__device__ __forceinline__ uint32_t fp8x2_to_bf16x2(uint32_t codes, bool e4m3, float scale) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(codes & 0xffffu), e4m3 ? __NV_E4M3 : __NV_E5M2);
  const float2 f = __half22float2(__half2(h));
  if constexpr (kScaled) {
    return (sr_round_bits_fast(__fmul_rn(f.x, scale), SrFormat::kBFloat16, 0u, true) & 0xffffu) |
           (sr_round_bits_fast(__fmul_rn(f.y, scale), SrFormat::kBFloat16, 0u, true) << 16);
  } else {
    return (__float_as_uint(f.x) >> 16) | (__float_as_uint(f.y) & 0xffff0000u);
  }
}

// Two bf16 multiplied pairwise (bits in, bits out), rounded to nearest.
__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// Eight fp8 codes (8 bytes, the first in the lowest) as eight bf16 (16 bytes). kScaled with
// a scale 2^e, |e| <= 100 (the per-label scales largeout chooses): every fp8 value times it
// is exact and normal in bf16, so one bf16 multiply per pair gives the bits of the fp32
// product's rounding (the per-element rounding made the scaled forward 3.8x slower than the
// unscaled one, bench/results/group_sparse_fp8_h200.json); other scales take that rounding.
template <bool kScaled>
__device__ __forceinline__ uint4 fp8x8_to_bf16x8(uint2 c, bool e4m3, float scale) {
  if constexpr (kScaled) {
    const uint32_t sb = __float_as_uint(scale);
    if ((sb & 0x807fffffu) == 0u && sb - (27u << 23) <= (200u << 23)) {  // +2^e, biased e in [27, 227]
      const uint32_t s2 = (sb >> 16) * 0x10001u;
      const uint4 u = fp8x8_to_bf16x8<false>(c, e4m3, 1.f);
      return make_uint4(bf16x2_mul(u.x, s2), bf16x2_mul(u.y, s2), bf16x2_mul(u.z, s2), bf16x2_mul(u.w, s2));
    }
  }
  return make_uint4(fp8x2_to_bf16x2<kScaled>(c.x, e4m3, scale), fp8x2_to_bf16x2<kScaled>(c.x >> 16, e4m3, scale),
                    fp8x2_to_bf16x2<kScaled>(c.y, e4m3, scale), fp8x2_to_bf16x2<kScaled>(c.y >> 16, e4m3, scale));
}
// Swizzled tiles start at 1024-byte boundaries.
__host__ __device__ constexpr int64_t round1k(int64_t n) { return (n + 1023) / 1024 * 1024; }

__device__ __forceinline__ uint8_t* align_smem(uint8_t* p) {
  const uint32_t a = smem_u32(p);
  return p + ((1024u - (a & 1023u)) & 1023u);
}

// Tiles of a row-major [B, L] 16-bit matrix (dY) whose row stride L may be odd, so that
// neither TMA nor aligned vector loads can describe them. A tile of kRows rows x G
// columns at (row0, l0) is copied with aligned 16-byte cp.async into a raw buffer (raw
// row r holds row0 + r's segment shifted right by its first element's offset mod 8),
// then `place` moves 8-column chunks to their final (swizzled) place.
// sums[i] += element i of 8 packed 16-bit values (a 16-byte chunk of a dY row).
template <class T>
__device__ __forceinline__ void add8(const uint32_t (&w)[4], float (&sums)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    sums[2 * i] += to_float(bits_to<T>(uint16_t(w[i] & 0xffff)));
    sums[2 * i + 1] += to_float(bits_to<T>(uint16_t(w[i] >> 16)));
  }
}

// Elements shift .. shift + 7 (shift 0-7) of the 16 packed 16-bit values lo, hi (lo first).
__device__ __forceinline__ uint4 shift_chunk(const uint4& lo, const uint4& hi, int shift) {
  const uint32_t w[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  const int k = shift >> 1;
  uint32_t v[5];
#pragma unroll
  for (int m = 0; m < 5; ++m) v[m] = (k & 2) ? ((k & 1) ? w[m + 3] : w[m + 2]) : ((k & 1) ? w[m + 1] : w[m]);
  const uint32_t sel = (shift & 1) ? 0x5432u : 0x3210u;
  return make_uint4(__byte_perm(v[0], v[1], sel), __byte_perm(v[1], v[2], sel), __byte_perm(v[2], v[3], sel),
                    __byte_perm(v[3], v[4], sel));
}

template <int kRows, int G>
struct SegmentTile {
  static constexpr int kChunks = G / 8;              // 16-byte chunks of a placed row
  static constexpr int kRawChunks = kChunks + 1;
  static constexpr int kRawRowBytes = kRawChunks * 16;
  static constexpr int kRawBytes = kRows * kRawRowBytes;

  // Thread t of n issues its share of the copies.
  template <class T>
  __device__ static void load(uint8_t* raw, const T* m, int B, int64_t L, int row0, int64_t l0, int t, int n) {
    const int64_t total = int64_t(B) * L;
    for (int e = t; e < kRows * kRawChunks; e += n) {
      const int r = e / kRawChunks, q = e - r * kRawChunks;
      const int row = row0 + r;
      if (row >= B) continue;
      const int64_t e0 = int64_t(row) * L + l0;
      const int64_t src = (e0 & ~int64_t(7)) + 8 * q;
      if (src >= e0 + G || src >= total) continue;  // holds nothing of the segment
      const int64_t avail = (total - src) * 2;
      cp_async_16_zfill(raw + r * kRawRowBytes + q * 16, m + src, avail >= 16 ? 16u : uint32_t(avail));
    }
  }
  // Chunk c (columns 8c..8c+7) of raw row r as 16 bytes; zero outside [B, L]. Adds the
  // 8 values to sums[] when asked. Two 16-byte shared reads, then a shift by `shift`
  // elements in registers.
  template <class T, bool kSum>
  __device__ static uint4 chunk(const uint8_t* raw, int B, int64_t L, int row0, int64_t l0, int r, int c,
                                float (&sums)[8]) {
    const int row = row0 + r;
    if (row >= B) return make_uint4(0, 0, 0, 0);
    const int shift = int((int64_t(row) * L + l0) & 7);
    const uint4* p = reinterpret_cast<const uint4*>(raw + r * kRawRowBytes) + c;
    const uint4 sh = shift_chunk(p[0], p[1], shift);
    uint32_t o[4] = {sh.x, sh.y, sh.z, sh.w};
    if (l0 + 8 * c + 8 > L) {  // the last group of the layer: columns past L are zero
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (l0 + 8 * c + i >= L) o[i >> 1] &= (i & 1) ? 0x0000ffffu : 0xffff0000u;
    }
    if constexpr (kSum) add8<T>(o, sums);
    return make_uint4(o[0], o[1], o[2], o[3]);
  }
};

// Releases a stage: one arrival per warp.
__device__ __forceinline__ void release(uint64_t* bar, int lane) {
  __syncwarp();
  if (lane == 0) mbar_arrive(bar);
}

// A step's slot in a ring of `stages` and the phase of that slot's barriers, kept by
// increments: the rings' sizes are run-time values, and a division per stage costs ~20-30
// instructions (dW's loader: most of its instructions; the forward's computing warpgroups:
// ~10% of theirs, per Nsight's per-instruction samples, bench/NOTES.md).
struct RingPos {
  int slot, phase;
  __device__ static RingPos at(int step, int stages) { return {step % stages, (step / stages) & 1}; }
  __device__ void advance(int steps, int stages) {
    for (slot += steps; slot >= stages; slot -= stages) phase ^= 1;
  }
};

// The weight stages of consecutive units, in the loader's order, kept by increments: unit n
// takes ring n % rings (each ring `per_ring` slots, ring r at slots r per_ring ..), and its
// stage q is that ring's (n / rings) qs + q-th stage. (The forward: rings = kCons computing
// warpgroups; dx v2: one ring.) stage() gives unit n's stage q; next_unit() moves to n + 1.
struct UnitStages {
  int rings, per_ring, qs;
  int r = 0;           // n % rings
  RingPos base{0, 0};  // the ring's stage (n / rings) qs
  __device__ void stage(int q, int& s, uint32_t& parity) const {
    RingPos p = base;
    p.advance(q, per_ring);
    s = r * per_ring + p.slot;
    parity = uint32_t(p.phase);
  }
  __device__ void next_unit() {
    if (++r == rings) {
      r = 0;
      base.advance(qs, per_ring);
    }
  }
};

// ================================================================== forward
template <int G, int kNk>
struct FwdCfg {
  static constexpr int kBM = 64;
  // A computing warpgroup takes kU consecutive groups (a unit) at a time, so that the
  // rows it stores are at least 64 labels (128 bytes) long; they go through a staging
  // tile of kU G / 64 boxes [64 rows][64 labels], SW128 (what TMA stores read; the plain
  // stores read its rows back, staging_offset): no padding, so that at G = 128 and H = 768
  // a third stage per ring fits (bank-conflict-free writes and row reads either way).
  static constexpr int kU = G >= 64 ? 1 : 64 / G;
  static constexpr int kRows = kU * G;  // weight rows of a unit: 64 or 128
  // A stage holds kNs 64-wide fan-in chunks of the whole unit (one 3-D TMA box of at most
  // 16 KB) and their indices; a unit takes kQs stages.
  static constexpr int kNs = kNk < 16384 / (kRows * 128) ? kNk : 16384 / (kRows * 128);
  static constexpr int kQs = kNk / kNs;
  static constexpr uint32_t kWBytes = kRows * kNs * 128;
  static constexpr uint32_t kIdxBytes = kU * kNs * kKC * 4;
  static constexpr int kStagingBytes = kBM * kRows * 2;
  static_assert(kStagingBytes % 1024 == 0 && kWBytes % 1024 == 0 && G * 128 % 1024 == 0,
                "tiles must stay 1024-byte aligned");
  // Each of the kCons computing warpgroups has its own ring of `spr` stages (w8: fp8
  // weights, one more barrier per stage).
  static constexpr int64_t smem_bytes(int64_t H, int spr, int kCons = 2, bool w8 = false) {
    return kSmemSlack + H * 128 + kCons * kStagingBytes + kCons * spr * int64_t(kWBytes + kIdxBytes) +
           (w8 ? 3 : 2) * kCons * spr * 8;
  }
};

// Byte offset of label p (16-bit) of row r in the forward's staging tile: boxes of 64 labels
// ([64 rows][128 bytes], SW128, 8 KB each), p / 64 the box. The value of
// p / 64 * 8192 + swz<128>(r, p % 64 * 2), written with the row's and the chunk's terms apart:
// through swz the forward kernels compiled to ~400 more SASS instructions each (sm_90a).
__device__ __forceinline__ uint32_t staging_offset(int r, int p) {
  return uint32_t(p >> 6) * 8192u + uint32_t(r) * 128u + ((uint32_t((p & 63) >> 3) ^ uint32_t(r & 7)) << 4) +
         uint32_t(p & 7) * 2u;
}

// One weight stage of a unit (the forward and dx v2): the 3-D box [kNs chunks][kU G
// rows][64] of fan-in chunks q kNs .. of groups gu .. gu + kU - 1, and their index chunks
// (groups past the layer read the last group's indices; their weight rows are zeros).
// kW8 (fp8 weights): the box holds 1-byte codes, unswizzled, and lands in the stage's
// second half, which upcast_stages then turns into the bf16 stage in place. idx_shift: group
// gv reads index row gv >> idx_shift (1: the forward runs a layer of 128-label groups as
// 64-label groups, two per index row; fwd_launch).
template <class C, int G, int K, bool kW8 = false>
__device__ __forceinline__ void load_unit_stage(uint8_t* wdst, int32_t* idst, const CUtensorMap* map, uint64_t* bar,
                                                const int32_t* __restrict__ idx, int gu, int q, int num_groups,
                                                int idx_shift = 0) {
  constexpr uint32_t kBytes = kW8 ? C::kWBytes / 2 : C::kWBytes;
  mbar_arrive_expect_tx(bar, kBytes + C::kIdxBytes);
  tma_load_3d(wdst + (C::kWBytes - kBytes), map, bar, 0, gu * G, q * C::kNs);
#pragma unroll
  for (int u = 0; u < C::kU; ++u) {
    const int gv = min(gu + u, num_groups - 1) >> idx_shift;
    bulk_load(idst + u * C::kNs * kKC, idx + int64_t(gv) * K + q * C::kNs * kKC, C::kNs * kKC * 4, bar);
  }
}

// The upcast of fp8 weight stages (kW8: the forward and dx v2, whose loader thread issues
// load_unit_stage<..., true>), by warps 1-3 of the loader warpgroup, stage by stage in the
// loader's order: wait for the codes (the upper half of the stage: [kNs][kRows][64] bytes),
// read all of them into registers, then (after a barrier of the 96 threads, as the bf16
// stage overwrites them) write the bf16 stage in the layout TMA gives a 16-bit weight
// ([kNs][kRows][64] SW128), and arrive on the stage's full barrier. `stages`: the ring
// slots of the units' stages and the parities of their barriers' phases, from the first
// unit on (by increments: the divisions of a slot computed per stage were ~40 instructions
// per stage and thread). (upcast_stages below picks kScaled from row_scale.)
template <class C, int G, bool kScaled>
__device__ __forceinline__ void upcast_stages_t(uint8_t* wst, uint64_t* raw, uint64_t* full,
                                                const float* __restrict__ row_scale, bool e4m3, int64_t L,
                                                int g_begin, int g_pad, UnitStages stages) {
  constexpr int kUpThreads = 96;
  constexpr int kChunks = int(C::kWBytes / 32);  // 16-byte chunks of codes per stage
  constexpr int kPer = (kChunks + kUpThreads - 1) / kUpThreads;
  const int ut = int(threadIdx.x) - 32, lane = threadIdx.x & 31;
  // kScaled: the row scales of this thread's chunks. A unit's stages (its k-blocks) share
  // its rows, so they are loaded once per unit, a unit ahead (loaded per stage after its
  // arrival they measured the same: the scaled forward's 3.8x over the unscaled one came
  // from the per-element rounding, bench/NOTES.md session 14).
  float sc[kPer], sc_next[kPer];
  auto load_scales = [&](int gu, float(&dst)[kPer]) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = ut + kUpThreads * i;
      const int64_t label = int64_t(gu) * G + (c >> 2) % C::kRows;
      dst[i] = kScaled && c < kChunks && gu < g_pad && label < L ? __ldg(row_scale + label) : 1.f;
    }
  };
  load_scales(g_begin, sc);
  for (int gu = g_begin; gu < g_pad; gu += C::kU, stages.next_unit()) {
    load_scales(gu + C::kU, sc_next);
    for (int q = 0; q < C::kQs; ++q) {
      int s = 0;
      uint32_t parity = 0;
      stages.stage(q, s, parity);
      uint8_t* w = wst + int64_t(s) * C::kWBytes;
      mbar_wait(&raw[s], parity, 13);
      uint4 v[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int c = ut + kUpThreads * i;
        if (c < kChunks) v[i] = *reinterpret_cast<const uint4*>(w + C::kWBytes / 2 + c * 16);
      }
      // (barrier 5: the kernels that upcast use 1-4 for their own warpgroups)
      named_barrier(5, kUpThreads);  // every code read before any is overwritten
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int c = ut + kUpThreads * i;
        if (c >= kChunks) continue;
        const int rowc = c >> 2, row = rowc % C::kRows;  // rowc = chunk * kRows + row
        const uint4 lo = fp8x8_to_bf16x8<kScaled>(make_uint2(v[i].x, v[i].y), e4m3, sc[i]);
        const uint4 hi = fp8x8_to_bf16x8<kScaled>(make_uint2(v[i].z, v[i].w), e4m3, sc[i]);
        const int j = (c & 3) * 2;  // the 16-byte bf16 chunk of the row
        uint8_t* dst = w + rowc * 128;
        *reinterpret_cast<uint4*>(dst + ((j ^ (row & 7)) << 4)) = lo;
        *reinterpret_cast<uint4*>(dst + (((j + 1) ^ (row & 7)) << 4)) = hi;
      }
      // the stage's generic stores before the consumers' reads (wgmma in the forward) and
      // before the next TMA write into the slot
      fence_proxy_async();
      __syncwarp();
      if (lane == 0) mbar_arrive(&full[s]);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) sc[i] = sc_next[i];
  }
}

// Called by threads 32..127 of the loader warpgroup; times row_scale where it is not null.
template <class C, int G>
__device__ __forceinline__ void upcast_stages(uint8_t* wst, uint64_t* raw, uint64_t* full,
                                              const float* __restrict__ row_scale, bool e4m3, int64_t L,
                                              int g_begin, int g_pad, UnitStages stages) {
  if (row_scale != nullptr)
    upcast_stages_t<C, G, true>(wst, raw, full, row_scale, e4m3, L, g_begin, g_pad, stages);
  else
    upcast_stages_t<C, G, false>(wst, raw, full, row_scale, e4m3, L, g_begin, g_pad, stages);
}

// kProbe (timing probes of bench/probe_fwd.py; 0 in the library): 1 = the loader alone
// (computing warps release each stage at once), 2 = no output stores, 3 = no gather
// (ldmatrix of fixed rows), 4 = MMAs alone (no ldmatrix, no stores). kCons computing
// warpgroups (2 or 3; fwd_cons picks), each with two MMA steps in flight.
// kW8 (T = bf16): the weight is fp8 (e4m3fn where e4m3, else e5m2), times row_scale[l]
// where row_scale is not null. Its stages come by TMA as codes (half the bytes); warps 1-3
// of the loader warpgroup upcast each one in place to the bf16 stage the computing
// warpgroups read (the values of largeout's fp8_to_bf16 op, so the results are those of the
// bf16 kernel on the upcast weight).
template <class T, int G, int kNk, int kProbe = 0, int kCons = 2, bool kW8 = false>
__global__ void __launch_bounds__(128 * (kCons + 1), 1)
gsl_fwd_sm90(const __grid_constant__ CUtensorMap tm_w, const __grid_constant__ CUtensorMap tm_y,
             const T* __restrict__ x, const int32_t* __restrict__ idx, const T* __restrict__ bias, T* __restrict__ y,
             int B, int H, int64_t L, int groups_per_split, int num_groups, int spr, int tma_store,
             const float* __restrict__ row_scale, int e4m3, uint32_t identity_perm, int prefetch_bias,
             int idx_shift, int bias_pairs) {
  static_assert(!kW8 || (std::is_same_v<T, __nv_bfloat16> && kProbe == 0), "fp8 weights: bf16, no probes");
  using C = FwdCfg<G, kNk>;
  constexpr int K = kNk * kKC, kU = C::kU, kNs = C::kNs, kQs = C::kQs;
  constexpr int kIdxInts = C::kIdxBytes / 4;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_smem(smem_raw);
  uint8_t* xs = base;                                  // x^T of the tile: [H][64] bf16, SW128
  constexpr int kThr = 128 * (kCons + 1);
  uint8_t* stg = xs + int64_t(H) * 128;                // [kCons][staging tile]
  uint8_t* wst = stg + kCons * C::kStagingBytes;       // [kCons spr][kNs][kRows][64] SW128
  int32_t* ist = reinterpret_cast<int32_t*>(wst + int64_t(kCons * spr) * C::kWBytes);  // [kCons spr][kU][kNs * 64]
  uint64_t* full = reinterpret_cast<uint64_t*>(ist + kCons * spr * kIdxInts);
  uint64_t* empty = full + kCons * spr;
  uint64_t* raw = empty + kCons * spr;  // kW8: a stage's codes and indices have landed

  const int b0 = blockIdx.y * C::kBM;
  const int g_begin = blockIdx.x * groups_per_split;
  const int g_end = min(g_begin + groups_per_split, num_groups);
  // Whole units: groups past g_end (only past the layer's last group: split ranges are
  // whole units) are computed on clamped indices and never stored.
  const int g_pad = g_begin + (g_end - g_begin + kU - 1) / kU * kU;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kCons * spr; ++s) {
      mbar_init(&full[s], kW8 ? 3 : 1);  // kW8: one arrival per upcasting warp
      mbar_init(&empty[s], 4);  // one arrival per warp of the ring's warpgroup
      if constexpr (kW8) mbar_init(&raw[s], 1);
    }
    fence_barrier_init();
    prefetch_tensormap(&tm_w);
    if (tma_store) prefetch_tensormap(&tm_y);
  }
  // x^T tile: 8x8 blocks (8 batch rows x 8 features), transposed in registers.
  for (int blk = threadIdx.x; blk < 8 * (H / 8); blk += kThr) {
    const int rb = blk & 7, f0 = (blk >> 3) * 8;
    uint32_t in[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int row = b0 + rb * 8 + i;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (row < B) v = *reinterpret_cast<const uint4*>(x + int64_t(row) * H + f0);
      in[i][0] = v.x, in[i][1] = v.y, in[i][2] = v.z, in[i][3] = v.w;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t sel = (j & 1) ? 0x7632u : 0x5410u;
      uint4 o;
      o.x = __byte_perm(in[0][j >> 1], in[1][j >> 1], sel);
      o.y = __byte_perm(in[2][j >> 1], in[3][j >> 1], sel);
      o.z = __byte_perm(in[4][j >> 1], in[5][j >> 1], sel);
      o.w = __byte_perm(in[6][j >> 1], in[7][j >> 1], sel);
      *reinterpret_cast<uint4*>(xs + swz<128>(f0 + j, rb * 16)) = o;
    }
  }
  __syncthreads();

  // Unit n of the CTA goes to computing warpgroup n % kCons, through that warpgroup's
  // ring: its k-th stage there (k = (n / kCons) kQs + q) sits in slot (n % kCons) spr +
  // k % spr (the upcasting warps walk the same order with UnitStages). One ring per
  // consumer keeps every wait at most one phase ahead of its barrier.
  if (wg == 0) {
    // Loader: one thread issues, per stage, one 3-D weight box and kU index copies. (By
    // divisions: UnitStages here cost a 4-byte spill at G = 64 with three computing
    // warpgroups, and the loader thread is not a bound.)
    if (threadIdx.x == 0) {
      for (int n = 0, gu = g_begin; gu < g_pad; ++n, gu += kU) {
        for (int q = 0; q < kQs; ++q) {
          const int k = (n / kCons) * kQs + q, s = (n % kCons) * spr + k % spr;
          mbar_wait(&empty[s], ((k / spr) & 1) ^ 1, 10);
          load_unit_stage<C, G, K, kW8>(wst + s * C::kWBytes, ist + s * kIdxInts, &tm_w, kW8 ? &raw[s] : &full[s],
                                        idx, gu, q, num_groups, idx_shift);
        }
      }
    }
    if constexpr (kW8) {
      if (threadIdx.x >= 32) {
        upcast_stages<C, G>(wst, raw, full, row_scale, e4m3 != 0, L, g_begin, g_pad, UnitStages{kCons, spr, kQs});
      }
    }
    return;
  }

  // Computing warpgroups: the steps (stage, group of the unit, chunk) are pipelined: the
  // ldmatrix gathers of step j overlap the MMAs of step j - 1. (cw from lane 0: the compiler
  // then knows it is the same in the whole warp and can keep what derives from it, the
  // stages' addresses and descriptors, in uniform registers.)
  const int cw = __shfl_sync(0xffffffffu, wg, 0) - 1;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int krow = (lane & 7) + ((lane >> 4) << 3);  // which of the 16 gathered rows this lane addresses
  const uint32_t bchunk16 = (2 * warp + ((lane >> 3) & 1)) * 16;  // which 8 batch rows
  const uint32_t xs_u32 = smem_u32(xs);
  const int t = lane & 3, r0 = 16 * warp + (lane >> 2);
  uint8_t* my_stg = stg + cw * C::kStagingBytes;
  auto free_stage = [&](int s) {  // one arrival per warp
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  };
  // This warpgroup's next stage in its ring (its k-th stage, k = (n / kCons) kQs + q for
  // unit n, sits in slot cw spr + k % spr; kept by increments: no division per unit).
  RingPos ring{0, 0};
  for (int gu = g_begin + cw * kU; gu < g_pad; gu += kCons * kU) {
    // acc[u] starts with its first MMA (scale-out zero): zeroing the registers while other
    // MMAs are in flight makes ptxas serialize every wgmma (warning C7518).
    float acc[kU][G / 2];
    // Bias of this thread's columns: loaded now (unpredicated) so that the loads land during
    // the MMAs, and converted in the epilogue. Converted here, the conversion was the loads'
    // first use: the warpgroup waited for them before its MMAs (30% of the forward's stall
    // samples at the headline shape, Nsight Compute, bench/results/ncu_fwd_sass_G32_s19_h100.csv).
    // Written after the MMAs in the source, ptxas still hoisted the first conversion above
    // them (40% of the stall samples at B=1024, K=64, G=64, L=131,072:
    // bench/results/ncu_fwd_G64_B1024_K64_L131072_s28_h100.txt), so bias_values first passes
    // each value through a byte permutation with its accumulator whose selector is the runtime
    // `identity_perm` (0x3210: the value unchanged): it then depends on the finished MMAs.
    // A whole unit's loads are at fixed offsets from one pointer (the clamped column of each
    // load, in 64-bit address arithmetic, was ~100 instructions per unit: ncu_fwd_sass_G32_s20_h100.csv);
    // the unit past the layer's last label clamps its columns. Columns past nl are computed
    // but never stored, so their bias need not be masked. (__ldg: with the prefetch below,
    // plain loads compiled to LDG without .CONSTANT.) braw[u][j] holds the bias of this
    // thread's label pair (8j + 2t, 8j + 2t + 1) of group u, low half first: one 4-byte load
    // where the bias is 4-byte aligned (bias_pairs; the pair's first label is even). With a
    // 2-byte load per label, ptxas zero-extended each value right after its load, above the
    // MMAs, and the warpgroup waited there: 18% of the stall samples at B=1024, K=64, G=64,
    // L=131,072 (bench/results/ncu_fwd_sass_G64_B1024_K64_L131072_s31.csv).
    const int64_t l0 = int64_t(gu) * G;
    const int64_t unit_labels = int64_t(g_end - gu < kU ? g_end - gu : kU) * G;
    const int nl = int(L - l0 < unit_labels ? L - l0 : unit_labels);  // labels this unit stores (>= 1)
    uint32_t braw[kU][G / 8];
    if (bias == nullptr) {
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < G / 8; ++j) braw[u][j] = 0;
    } else if (nl == kU * G && bias_pairs) {
      const uint32_t* bq = reinterpret_cast<const uint32_t*>(reinterpret_cast<const uint16_t*>(bias) + l0 + 2 * t);
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < G / 8; ++j) braw[u][j] = __ldg(bq + (u * G + 8 * j) / 2);
    } else {
      const uint16_t* bq = reinterpret_cast<const uint16_t*>(bias) + l0;
      auto lab = [&](int c) { return nl == kU * G ? c : min(c, nl - 1); };
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < G / 8; ++j) {
          const int c = u * G + 8 * j + 2 * t;
          braw[u][j] = uint32_t(__ldg(bq + lab(c))) | (uint32_t(__ldg(bq + lab(c + 1))) << 16);
        }
    }
    // prefetch_bias (chosen per shape, fwd_launch): the lines of this warpgroup's next unit's
    // bias into L1 (the first and last label of each 64, so that a span across two lines
    // brings both), for that unit's loads above to hit there.
    if (prefetch_bias && bias != nullptr && lane < 2 * kU * G / 64) {
      const int64_t lp = l0 + int64_t(kCons * kU * G) + 64 * (lane >> 1) + 63 * (lane & 1);
      if (lp < L) prefetch_l1(bias + lp);
    }
    auto bias_values = [&](float (&bv)[kU][G / 8][2]) {
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < G / 8; ++j) {
          const uint32_t pair = __byte_perm(braw[u][j], __float_as_uint(acc[u][4 * j]), identity_perm);
          bv[u][j][0] = to_float(bits_to<T>(uint16_t(pair & 0xffffu)));
          bv[u][j][1] = to_float(bits_to<T>(uint16_t(pair >> 16)));
        }
    };
    if constexpr (kProbe == 1) {
      for (int q = 0; q < kQs; ++q) {
        const int s = cw * spr + ring.slot;
        mbar_wait(&full[s], ring.phase, 11);
        ring.advance(1, spr);
        free_stage(s);
      }
      continue;
    }
    uint32_t a[2][4][4];
    constexpr int kStepsPerStage = kU * kNs;
    int prev_s = 0;  // the slot of the stage before (freed after its last step's MMAs)
#pragma unroll
    for (int q = 0; q < kQs; ++q) {
      const int s = cw * spr + ring.slot, parity = ring.phase;
      ring.advance(1, spr);
      mbar_wait(&full[s], parity, 11);
      // kW8: the indices (a bulk copy) completed on raw[s]: observe it here too rather than
      // only through the upcasting warps' arrival (it has completed: returns at once).
      if constexpr (kW8) mbar_wait(&raw[s], parity, 14);
      const int32_t* is = ist + s * kIdxInts;
      // The stage's weight descriptor: each MMA's is this at its tile's offset (desc_offset),
      // rather than a descriptor built per MMA (~7 instructions each, 16 per unit at G = 32
      // and K = 128).
      const uint64_t wdesc = make_desc(smem_u32(wst + s * C::kWBytes), 16, 1024, Swizzle::k128B);
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int cc = 0; cc < kNs; ++cc) {
          const int j = (q * kU + u) * kNs + cc;  // step of the unit
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            if constexpr (kProbe == 4) {
#pragma unroll
              for (int e = 0; e < 4; ++e) a[j & 1][kk][e] = 0x3f803f80u ^ uint32_t(is[0] & 1);
            } else {
              const int f = kProbe == 3 ? kk * 16 + krow : is[(u * kNs + cc) * kKC + kk * 16 + krow];
              ldmatrix_x4_trans(a[j & 1][kk],
                                xs_u32 + ((uint32_t(f) * 128 + bchunk16) ^ ((uint32_t(f) & 7) << 4)));
            }
          }
          const uint32_t tile = uint32_t(cc * C::kRows + u * G) * 128u;  // its byte offset in the stage
          fence_regs(acc[u]);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
            mma_rs<T, G>(a[j & 1][kk], desc_offset(wdesc, tile + kk * 32), acc[u], !(q == 0 && cc == 0 && kk == 0));
          wgmma_commit();
          // Step j - 1 is done (its A registers are free for step j + 1); free its stage if
          // it was the stage's last step (then j is the first step of stage q, and j - 1 the
          // last of stage q - 1).
          if (j >= 1) {
            wgmma_wait<1>();
            if (j % kStepsPerStage == 0) free_stage(prev_s);
          }
        }
      prev_s = s;
    }
    wgmma_wait<0>();
#pragma unroll
    for (int u = 0; u < kU; ++u) fence_regs(acc[u]);
    free_stage(prev_s);  // the last step's stage: still in flight at the end of the loop
    float bv[kU][G / 8][2];
    bias_values(bv);
    if constexpr (kProbe == 2 || kProbe == 4) {  // keep the results live, store nothing
      float z = 0.f;
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int i = 0; i < G / 2; ++i) z += acc[u][i] + bv[u][i / 4 % (G / 8)][i & 1];
      if (z == 1234.5f) y[0] = from_float<T>(z);
      continue;
    }

    // acc[u][4j + 2h + e] is (row r0 + 8h, label (gu + u) * G + 8j + 2t + e).
    // Epilogue: + bias, round, into the staging tile. By TMA where y's row stride L * 2 bytes
    // is a multiple of 16: one thread stores the boxes; the tensor's bounds clip rows past B
    // and labels past L (split ranges are whole units, so every label stored belongs to this
    // CTA). Else by plain stores: each warp stores 16 whole rows, read back from the boxes.
    const bool issuer = (threadIdx.x & 127) == 0;
    if (tma_store && issuer) bulk_wait_read0();  // the previous unit's boxes have been read
    named_barrier(2 + cw, 128);  // (plain stores: the previous unit's rows have left the staging tile)
#pragma unroll
    for (int u = 0; u < kU; ++u)
#pragma unroll
      for (int j = 0; j < G / 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<uint32_t*>(my_stg + staging_offset(r0 + 8 * h, u * G + 8 * j + 2 * t)) =
              pack2<T>(acc[u][4 * j + 2 * h] + bv[u][j][0], acc[u][4 * j + 2 * h + 1] + bv[u][j][1]);
    if (tma_store) {
      fence_proxy_async();
      named_barrier(2 + cw, 128);
      if (issuer) {
#pragma unroll
        for (int bx = 0; bx < kU * G / 64; ++bx) tma_store_2d(&tm_y, my_stg + bx * 8192, int(l0) + 64 * bx, b0);
        bulk_commit();
      }
      continue;
    }
    named_barrier(2 + cw, 128);
    const int rows = min(16, B - b0 - 16 * warp);
    int64_t e0 = int64_t(b0 + 16 * warp) * L + l0;  // first element of the row
#pragma unroll 4
    for (int rr = 0; rr < rows; ++rr, e0 += L) {
      const int r = 16 * warp + rr;
      T* yr = y + e0;
      if ((e0 & 1) == 0) {  // 4-byte aligned pairs (p even: both in one 16-byte chunk)
        for (int p = 2 * lane; p < nl; p += 64) {
          const uint8_t* src = my_stg + staging_offset(r, p);
          if (p + 1 < nl) *reinterpret_cast<uint32_t*>(yr + p) = *reinterpret_cast<const uint32_t*>(src);
          else yr[p] = *reinterpret_cast<const T*>(src);
        }
      } else {
        for (int p = lane; p < nl; p += 32) yr[p] = *reinterpret_cast<const T*>(my_stg + staging_offset(r, p));
      }
    }
  }
  if (tma_store && (threadIdx.x & 127) == 0) bulk_wait_read0();  // shared memory outlives the stores' reads
}

// ================================================================== dW
// (group, batch chunk) of a dW step, kept by increments.
struct DwStep {
  int g, bc;
  __device__ void next(int nbc) {
    if (++bc == nbc) {
      bc = 0;
      ++g;
    }
  }
};

template <int G, int kNmb>
struct DwCfg {
  static constexpr int K = kNmb * 64;
  // B operand (dY tile [64 batch][G labels], MN-major): SW64 rows of 32 labels for G = 32,
  // else SW128 blocks of 64 labels (8 KB each). Stage: A [K][64] | dY tile | raw dY rows.
  static constexpr int kRowBytes = G == 32 ? 64 : 128;
  static constexpr uint32_t kABytes = K * 128;
  static constexpr uint32_t kDyBytes = 64 * G * 2;
  using Seg = SegmentTile<64, G>;
  static constexpr int64_t kStageBytesV1 = round1k(kABytes + kDyBytes + Seg::kRawBytes);
  static constexpr int64_t kStageBytesV2 = round1k(kABytes + kDyBytes);  // dY by TMA: no raw rows
  // Row classes (rc, v2 where dY's row stride is not a multiple of 8; DyMaps): the raw rows
  // come by TMA, a box of [8 rows][G + 8 labels] per class, the eight classes one after another
  // (raw row 8 c + i: tile row c + 8 i), as many bytes as v1's raw rows.
  static constexpr uint32_t kRcBoxBytes = 8 * Seg::kRawRowBytes;
  static_assert(8 * kRcBoxBytes == Seg::kRawBytes && kRcBoxBytes % 128 == 0, "row-class boxes");
  __host__ __device__ static constexpr int64_t stage_bytes(bool tma, bool rc = false) {
    return tma && !rc ? kStageBytesV2 : kStageBytesV1;
  }
  // split_b: + the second warpgroup's partial dW ([G / 2][128] fp32). dbc (dbias summed by the
  // computing warpgroups): their [256][8] dbias partials instead of the loader's [128][8].
  static int64_t smem_bytes(int stages, bool tma, bool split_b = false, bool dbc = false, bool rc = false) {
    return kSmemSlack + stages * stage_bytes(tma, rc) + 2 * stages * 8 + (dbc ? 256 : 128) * 8 * 4 +
           (split_b ? G * 256 : 0);
  }
  // Offset of chunk c (labels 8c..8c+7) of batch row r in the dY tile.
  __device__ static uint32_t dy_chunk(int r, int c) {
    if constexpr (G == 32) return swz<64>(r, 16 * c);
    else return uint32_t(c >> 3) * 8192u + swz<128>(r, 16 * (c & 7));
  }
};

// dY's tensor maps for dW v2 and dx v2: m[0] alone (rows of 16-byte aligned stride), or with kRc
// one per row class. Rows c, c + 8, c + 16, .. of dY (class c) lie 16 ldy bytes apart, an aligned
// stride even where ldy is odd: class c's map starts at row c's first element rounded down to
// 16 bytes, shift = (c ldy) mod 8 elements before it, so label l of the class's row i is its
// column l + shift. A box at the (aligned) column g G, G + 8 labels wide, holds the G labels of
// group g whatever the shift (a box's inner start must be a multiple of 16 bytes: session 26).
struct DyMaps {
  CUtensorMap m[8];
  uint32_t shifts;  // class c's shift in bits 3c .. 3c + 2
  __device__ int shift(int c) const { return int((shifts >> (3 * c)) & 7u); }
};

// Row of the A tile that holds k-slot r: within each 16 rows, k-slot 2a + h sits in row
// a + 8h, so that a thread's two accumulator rows are adjacent k-slots (4-byte stores of dW).
__device__ __forceinline__ int dw_a_row(int r) { return (r & ~15) | ((r & 15) >> 1) | ((r & 1) << 3); }

// kNmb = K / 64 blocks of 64 k-slots: 1 -> the computing warpgroups take alternate groups;
// 2, 4 -> both work on every group, each on half of the blocks. kProbe (timing probes of
// bench/probe_fwd.py --dw; 0 in the library; the results are then wrong): 1 = no gathers
// of x^T rows, 2 = no dY loads (v2: no TMA of the dY tile) or placement, 3 = no MMAs; v2
// only: 4 = no dbias (the loader neither reads the landed dY tile nor sums), 5 = 1 and 2
// (no copies at all: the ring's barriers, the MMAs and dbias on what the stages hold),
// 6 = no proxy fence before the computing warpgroups' MMAs; row classes (kRc) only: 7 = no
// placement (the raw rows neither read nor summed; fence and barrier kept), 8 = no proxy fence
// after the placement, 9 = no named barrier after it, 10 = none of the three (the loader's eight
// boxes a stage and the MMAs on an unplaced tile).
// kTma (v2, where dY's row stride is a multiple of 8): the dY tile comes by TMA straight into the MMA's swizzled
// layout (the probes showed the register placement of v1 to be half of dW's time); each
// loader thread's gathers arrive on the stage's barrier when they land (no loader-wide
// wait); the loader then reads the landed tile for dbias and releases the stage too.
// kLoaders (v2 only): loader warpgroups, 1, 2 or 4. With more than one, each issues its share
// of each stage's gathers; only the first also does the dY box, dbias and the release:
// bench_gather_bw measured cp.async gathers of this pattern at ~3.6 TB/s from 128 threads
// per SM, ~6.3 from 256 and ~9.7 from 512 (gather_bw_s21_h200.json), and dW at G = 32 moves
// 2.74 GB of gathers in 0.90 ms (3.0 TB/s), which suggested the one loader warpgroup's issue as
// its bound; but 2 and 4 measured 5-7% slower than 1 (dwload_*_s23_h100.json): the first
// loader's own chain (wait for the landed tile, dbias, release) was, which kDbC removes.
// kDyCp (v2, one loader warpgroup; LARGEOUT_SM90_DW_DY=cp, opt-in: 9% slower at G = 32, 12% at
// G = 128 than TMA, B = 512 K = 128 L = 670,208 in dwcp_*_s24_h100.json): the dY tile
// comes by the loader threads' cp.async (each thread the chunks it sums for dbias, zero-filled
// past B and L) straight into the swizzled layout TMA gives, instead of one TMA box of 64 rows of
// G * 2 bytes (64 at G = 32), so that dY takes the path the gathers take; tm_dy is then unused.
// kDbC (v2, one loader warpgroup; the default there, LARGEOUT_SM90_DW_DBIAS=loader opts out):
// dbias is summed by the computing warpgroups from the dY tile their MMAs read, each thread one
// 16-byte chunk of G / 32 rows per stage (K = 64, where one warpgroup takes a stage: G / 16),
// and reduced at each group's end over the threads that worked on it (256; K = 64 with
// alternate groups: the warpgroup's 128); the loader then only issues
// copies (no wait for a landed stage, no reads, no release). Session 18's per-instruction
// profile had the loader warps busy with their ~190 instructions a stage (dbias among them)
// while the computing warps waited for stages. Measured (dwcp_*_s24_h100.json, B = 512 K = 128
// L = 670,208, twice in turn): dW at G = 32 0.874 -> 0.470 ms, G = 64 0.537 -> 0.340, G = 128
// 0.318 -> 0.310, so the loader's chain was dW's bound.
// kRc (with kDbC; where dY's row stride is not a multiple of 8, unless LARGEOUT_SM90_DW_RC=0, which
// leaves it to v1): the eight row-class boxes of a stage (DyMaps) land in its raw rows, two issued
// by lane 0 of each loader warp; each computing thread shifts its dbias chunks from there into the
// MMA's tile (zero past B), sums them, and the threads that share the stage meet at a named barrier
// before the MMAs. (All eight issued by thread 0 ahead of its warp's gathers, as first written,
// took 1.03-1.47x longer at G = 32 and 64, about as long at G = 128, B = 512, L = 670,091, K 64-256:
// knob_dw_rcspread_s41_h100.json; with the placement switched off that kernel still took 0.78 ms
// against the aligned 0.53, probe_dw_rc_s41_h100.json, so the loader side was the cost.)
template <class T, int G, int kNmb, int kProbe = 0, bool kTma = false, int kLoaders = 1, bool kDyCp = false,
          bool kDbC = false, bool kRc = false>
__global__ void __launch_bounds__(128 * (kLoaders + 2), 1)
gsl_dw_sm90(const __grid_constant__ DyMaps tm_dy, const T* __restrict__ xt, const T* __restrict__ dy,
            const int32_t* __restrict__ idx, T* __restrict__ dw, T* __restrict__ db, int B, int Bp, int64_t L,
            int64_t ldy, int groups_per_cta, int num_groups, int stages, int split_batch) {
  using C = DwCfg<G, kNmb>;
  using Seg = typename C::Seg;
  constexpr int K = C::K;
  constexpr int64_t kStageBytes = C::stage_bytes(kTma, kRc);
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_smem(smem_raw);
  uint64_t* full = reinterpret_cast<uint64_t*>(base + stages * kStageBytes);
  uint64_t* empty = full + stages;
  float* red = reinterpret_cast<float*>(empty + stages);  // dbias partials: [128][8] (kDbC: [256][8])
  float* part = red + (kDbC ? 256 : 128) * 8;             // split_b: [G / 2][128] of the second warpgroup

  const int g_begin = blockIdx.x * groups_per_cta;
  const int g_end = min(g_begin + groups_per_cta, num_groups);
  const int nbc = Bp / 64;
  constexpr bool split_m = kNmb >= 2;  // both computing warpgroups work on every stage
  constexpr int kMaxMB = split_m ? kNmb / 2 : 1;
  // K = 64 with a batch whose two groups of stages do not fit the ring (unless
  // LARGEOUT_SM90_DW_SPLITB=0): both warpgroups work on every group, on alternate stages
  // (batch chunks), and add their partial dW in a fixed order at the group's end. The ring
  // then has an even number of stages, so that a slot's previous use was the same
  // warpgroup's (a wait never tests a phase the other warpgroup has not finished).
  const bool split_b = kNmb == 1 && split_batch != 0;
  const int wg = threadIdx.x / 128;
  static_assert(kLoaders == 1 || ((kLoaders == 2 || kLoaders == 4) && kTma && kProbe == 0),
                "more loader warpgroups: 2 or 4, v2 only");
  static_assert(kProbe <= 3 || kTma, "probes 4-6: v2 only");
  static_assert(!kDyCp || (kTma && kLoaders == 1 && kProbe == 0), "dY by cp.async: v2, one loader warpgroup");
  static_assert(!kDbC || (kTma && kLoaders == 1 && (kProbe == 0 || (kRc && kProbe >= 7))),
                "dbias by the computing warpgroups: v2, one loader warpgroup");
  static_assert(kProbe < 7 || (kRc && kProbe <= 10), "probes 7-10: row classes only");
  static_assert(!kRc || (kDbC && !kDyCp), "row classes: dbias by the computing warpgroups, dY by TMA");

  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      // every loader thread, once its share of the stage is in place (v2: + the TMA's arrival)
      mbar_init(&full[s], kTma ? 128 * kLoaders + (kDyCp ? 0 : 1) : 128);
      // v2: the loader's warps read dY for dbias (kDbC: the computing warps do)
      mbar_init(&empty[s], (split_m ? 8 : 4) + (kTma && !kDbC ? 4 : 0));
    }
    fence_barrier_init();
    if constexpr (kTma) {
#pragma unroll
      for (int c = 0; c < (kRc ? 8 : 1); ++c) prefetch_tensormap(&tm_dy.m[c]);
    }
  }
  __syncthreads();

  if (wg < kLoaders) {
    // Loader, software-pipelined: stage i's copies (gathered x^T rows to their place,
    // dY rows to the raw buffer) are issued `ahead` stages before its dY tile is placed.
    const int tid = threadIdx.x;
    const int c8 = tid & 7;                 // 16-byte chunk (8 batch rows) of the rows it gathers
    constexpr int kRowStep = 16 * kLoaders;
    constexpr int kRowsPer = K / kRowStep;  // k-slots rows tid / 8 + kRowStep i
    uint32_t a_dst[kRowsPer];
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
      a_dst[i] = swz<128>(dw_a_row((tid >> 3) + kRowStep * i), c8 * 16);
      // (opaque to the compiler, which otherwise rebuilt these offsets from the thread index in
      // every stage: ~30 of the ~80 instructions a stage cost each loader warp with 4 loaders)
      if constexpr (kLoaders > 1) asm volatile("" : "+r"(a_dst[i]));
    }
    const T* a_src[kRowsPer];
    constexpr int kCPT = 128 % (G / 8) == 0 ? 1 : 0;  // (static check below)
    static_assert(kCPT == 1, "placement chunks must map to fixed columns");
    const int pc = tid % (G / 8);           // placed chunk (labels 8 pc .. 8 pc + 7) of this thread
    float sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    // The x^T rows of group g's k-slots that this thread gathers. The indices of the group
    // after it are loaded here too, a whole group (nbc stages) before they are needed: read
    // right before the gathers that use them, their global latency stalled the loader at
    // every group's first stage (Nsight: long-scoreboard stalls, bench/NOTES.md).
    int32_t next_idx[kRowsPer];
    auto load_idx = [&](int g) {
#pragma unroll
      for (int q = 0; q < kRowsPer; ++q) next_idx[q] = g < g_end ? idx[int64_t(g) * K + (tid >> 3) + kRowStep * q] : 0;
    };
    load_idx(g_begin);
    auto point_rows = [&](int g) {
#pragma unroll
      for (int q = 0; q < kRowsPer; ++q) a_src[q] = xt + int64_t(next_idx[q]) * Bp + c8 * 8;
      load_idx(g + 1);
    };
    // dbias of group g: label 8 pc + i is summed by the threads with this pc, in a fixed order.
    auto dbias_of_group = [&](int g) {
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        red[tid * 8 + q] = sums[q];
        sums[q] = 0.f;
      }
      named_barrier(1, 128);
      if (db != nullptr && tid < G && int64_t(g) * G + tid < L) {
        float sum = 0.f;
        for (int q = (tid >> 3); q < 128; q += G / 8) sum += red[q * 8 + (tid & 7)];
        db[int64_t(g) * G + tid] = from_float<T>(sum);
      }
      named_barrier(1, 128);
    };
    if constexpr (kTma) {
      // v2: issue stage i (the dY boxes by one thread, every thread's gathers, which arrive
      // on the barrier when they land), then read stage j = i - ahead's dY tile for dbias.
      // (No cp.async group count to wait on here, so no cap of 8 as in v1.)
      const int ahead = stages - 2;
      const int total = (g_end - g_begin) * nbc;
      constexpr int kBoxLabels = G == 32 ? 32 : 64;
      // kDyCp: this thread's dY chunks of a stage, chunk pc of tile rows r0 + kDyRowStep m
      // (m < kDyPer), from row bc * 64 + that row of dY and labels g G + 8 pc ...
      constexpr int kDyRowStep = 128 / (G / 8), kDyPer = 64 / kDyRowStep;
      const int r0 = tid / (G / 8);
      uint32_t dy_dst[kDyPer];
#pragma unroll
      for (int m = 0; m < kDyPer; ++m) dy_dst[m] = C::kABytes + C::dy_chunk(r0 + kDyRowStep * m, pc);
      // Stage (g, bc) into slot s: its dY tile (TMA boxes, or kDyCp this thread's chunks) and this
      // thread's gathers (from a_src[q] + off), which arrive on the slot's `full` barrier when they land.
      auto issue_stage = [&](int g, int bc, int s, int off) {
        uint8_t* as = base + s * kStageBytes;
        if constexpr (kDyCp) {
          // (bytes of the chunk inside L: 16, or fewer where a row-padded dY ends within it)
          const int64_t l = int64_t(g) * G + 8 * pc;
          const uint32_t lbytes = l >= L ? 0u : L - l >= 8 ? 16u : uint32_t(L - l) * 2u;
#pragma unroll
          for (int m = 0; m < kDyPer; ++m) {
            const int row = bc * 64 + r0 + kDyRowStep * m;
            const uint32_t bytes = row < B ? lbytes : 0u;
            cp_async_16_zfill(as + dy_dst[m], bytes != 0 ? dy + int64_t(row) * ldy + l : dy, bytes);
          }
        } else if constexpr (kRc) {
          // Class c's rows bc * 8 .. bc * 8 + 7 (tile rows c + 8 i): lane 0 of loader warp w issues
          // classes 2w and 2w + 1, ahead of its warp's gathers. Thread 0 alone arrives and sets the
          // bytes to expect; the other warps' boxes may land first (the tx-count may go negative),
          // and the phase cannot complete before that arrival, one of the 129 it needs.
          if ((tid & 31) == 0) {
            const int c = 2 * (tid >> 5);
            if (c == 0) mbar_arrive_expect_tx(&full[s], 8 * C::kRcBoxBytes);
            uint8_t* raw = as + C::kABytes + C::kDyBytes;
            tma_load_2d(raw + c * C::kRcBoxBytes, &tm_dy.m[c], &full[s], g * G, bc * 8);
            tma_load_2d(raw + (c + 1) * C::kRcBoxBytes, &tm_dy.m[c + 1], &full[s], g * G, bc * 8);
          }
        } else if (tid == 0) {
          if constexpr (kProbe == 2 || kProbe == 5) {
            mbar_arrive(&full[s]);
          } else {
            mbar_arrive_expect_tx(&full[s], C::kDyBytes);
#pragma unroll
            for (int bx = 0; bx < G / kBoxLabels; ++bx)
              tma_load_2d(as + C::kABytes + bx * 64 * kBoxLabels * 2, &tm_dy.m[0], &full[s], g * G + bx * kBoxLabels,
                          bc * 64);
          }
        }
        if constexpr (kProbe == 1 || kProbe == 5) {
          mbar_arrive(&full[s]);
        } else {
#pragma unroll
          for (int q = 0; q < kRowsPer; ++q) cp_async_16(as + a_dst[q], a_src[q] + off);
          mbar_arrive_cp_async(&full[s]);
        }
      };
      if constexpr (kDbC) {
        // The loader only issues copies (the computing warpgroups read dY for dbias and release
        // the stages): a group at a time, its stages straight through.
        // (the gather pointers advance by a batch chunk per stage, 64-bit adds rather than
        // products, until point_rows sets them for the next group)
        RingPos ri{0, 0};
        for (int g = g_begin; g < g_end; ++g) {
          point_rows(g);
          for (int bc = 0; bc < nbc; ++bc) {
            const int s = ri.slot;
            mbar_wait(&empty[s], ri.phase ^ 1, 20);
            ri.advance(1, stages);
            issue_stage(g, bc, s, 0);
#pragma unroll
            for (int q = 0; q < kRowsPer; ++q) a_src[q] += 64;
          }
        }
        cp_async_wait_all();  // (its last copies land before it exits: v2 commits no groups)
        return;
      }
      RingPos ri{0, 0}, rj{0, 0};  // the slots of steps i and j = i - ahead
      DwStep si{g_begin, 0}, sj{g_begin, 0};
      for (int i = 0; i < total + ahead; ++i) {
        if (i < total) {
          const int g = si.g, bc = si.bc, s = ri.slot;
          if (bc == 0) point_rows(g);
          mbar_wait(&empty[s], ri.phase ^ 1, 20);
          ri.advance(1, stages);
          si.next(nbc);
          issue_stage(g, bc, s, bc * 64);
        }
        if (i < ahead || wg != 0) continue;  // (step j = i - ahead; the first loader warpgroup's)
        const int g = sj.g, bc = sj.bc, s = rj.slot;
        mbar_wait(&full[s], rj.phase, 22);
        rj.advance(1, stages);
        sj.next(nbc);
        const uint8_t* ds = base + s * kStageBytes + C::kABytes;
        // chunk pc of rows e / (G / 8): a fixed order
        for (int e = tid; e < (kProbe == 4 ? 0 : 64 * (G / 8)); e += 128) {
          const uint4 v = *reinterpret_cast<const uint4*>(ds + C::dy_chunk(e / (G / 8), pc));
          add8<T>({v.x, v.y, v.z, v.w}, sums);
        }
        release(&empty[s], tid & 31);
        if (kProbe != 4 && bc == nbc - 1) dbias_of_group(g);
      }
      // (the other loader warpgroups never wait on `full`: they let their last copies land
      // before they exit; the first one waited for every stage above)
      if (wg != 0) cp_async_wait_all();
      return;
    }
    // A consumer holds a stage until its next one is full: at most stages - 2 ahead (split_b:
    // a warpgroup's next stage is two on, so stages - 3).
    const int ahead = min(stages - (split_b ? 3 : 2), 8);
    const int total = (g_end - g_begin) * nbc;
    RingPos ri{0, 0}, rj{0, 0};  // the slots of steps i and j = i - ahead
    DwStep si{g_begin, 0}, sj{g_begin, 0};
    for (int i = 0; i < total + ahead; ++i) {
      if (i < total) {
        const int g = si.g, bc = si.bc, s = ri.slot;
        uint8_t* as = base + s * kStageBytes;
        if (bc == 0) point_rows(g);
        mbar_wait(&empty[s], ri.phase ^ 1, 20);
        ri.advance(1, stages);
        si.next(nbc);
        if constexpr (kProbe != 1) {
#pragma unroll
          for (int q = 0; q < kRowsPer; ++q) cp_async_16(as + a_dst[q], a_src[q] + bc * 64);
        }
        if constexpr (kProbe != 2) Seg::load(as + C::kABytes + C::kDyBytes, dy, B, L, bc * 64, int64_t(g) * G, tid, 128);
        cp_async_commit();
      }
      if (i < ahead) continue;  // (step j = i - ahead)
      cp_async_wait(i < total ? ahead : 0);
      named_barrier(1, 128);  // every loader thread's copies of stage j have landed
      const int g = sj.g, bc = sj.bc, s = rj.slot;
      rj.advance(1, stages);
      sj.next(nbc);
      uint8_t* ds = base + s * kStageBytes + C::kABytes;
      const uint8_t* raw = ds + C::kDyBytes;
      for (int e = tid; e < (kProbe == 2 ? 0 : 64 * (G / 8)); e += 128) {
        const int r = e / (G / 8);
        const uint4 v = Seg::template chunk<T, true>(raw, B, L, bc * 64, int64_t(g) * G, r, pc, sums);
        *reinterpret_cast<uint4*>(ds + C::dy_chunk(r, pc)) = v;
      }
      fence_proxy_async();
      mbar_arrive(&full[s]);
      if (bc == nbc - 1) dbias_of_group(g);
    }
    return;
  }

  // (cw from lane 0: known to the compiler to be the same in the whole warp, so that the stages'
  // addresses and the MMAs' descriptors, which derive from it, can stay in uniform registers)
  const int cw = __shfl_sync(0xffffffffu, wg, 0) - kLoaders;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int t = lane & 3, ra = lane >> 2;
  // MN-major B descriptor: SBO = 8 batch rows, LBO = the next 64-label block.
  constexpr uint32_t kBSbo = C::kRowBytes * 8;
  constexpr Swizzle kBSwz = G == 32 ? Swizzle::k64B : Swizzle::k128B;
  const int g_first = g_begin + (split_m || split_b ? 0 : cw);
  const int g_step = split_m || split_b ? 1 : 2;
  const int bc_step = split_b ? 2 : 1;
  RingPos group_pos = RingPos::at((g_first - g_begin) * nbc, stages);  // the slot of its group's first step
  // kDbC: the threads that read a stage's dY tile for dbias are both computing warpgroups where
  // both work on every stage (split_m), else the one that takes the stage; this thread's chunk
  // (labels 8 dpc ..) of tile rows dr0 + kDbRowStep m, m < kDbPer.
  const int ct = threadIdx.x - 128 * kLoaders;  // 0 .. 255
  constexpr int kDbThreads = split_m ? 256 : 128;
  constexpr int kDbRowStep = kDbThreads / (G / 8), kDbPer = 64 / kDbRowStep;
  const int dpc = ct % (G / 8), dr0 = (ct % kDbThreads) / (G / 8);
  static_assert(!kRc || kDbRowStep % 8 == 0, "kRc: a thread's dbias rows in one row class");
  for (int g = g_first; g < g_end; g += g_step, group_pos.advance(g_step * nbc, stages)) {
    float acc[kMaxMB][G / 2];
    float dsum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int m = 0; m < kMaxMB; ++m)
#pragma unroll
      for (int i = 0; i < G / 2; ++i) acc[m][i] = 0.f;
    // split_b: this warpgroup takes the group's steps whose index in the CTA's sequence has the
    // parity cw (batch chunks bc0, bc0 + 2, ..), so that with the even ring every slot is only
    // ever this warpgroup's. (Chunks bc = cw, as before, swap the parities after a group of an
    // odd number of chunks: a slot's previous step was then the other warpgroup's, whose copies
    // may still be landing while this one, a ring later, waits on the slot; its parity test can
    // then pass on that older phase.)
    const int bc0 = split_b ? cw ^ (((g - g_begin) * nbc) & 1) : 0;
    RingPos pos = group_pos;
    pos.advance(bc0, stages);
    int prev = -1;  // the slot of this warpgroup's previous step (released once the next one's MMAs are issued)
    for (int bc = bc0; bc < nbc; bc += bc_step, pos.advance(bc_step, stages)) {
      const int s = pos.slot;
      mbar_wait(&full[s], pos.phase, 21);
      if constexpr (kProbe == 3) {
        release(&empty[s], lane);
        continue;
      }
      if constexpr (kRc) {
        // This thread's chunks from the raw rows into the MMA's tile (zero past B), summed for
        // dbias; then, after the proxy fence (these writes and the gathered rows are the generic
        // proxy's), every thread that reads the tile waits for the others' chunks.
        uint8_t* st = base + s * kStageBytes;
        // This thread's rows share a class (dr0 mod 8): its raw rows and shift. (Computed here,
        // per stage: at G = 128, K = 256 the two accumulators leave no registers to keep them,
        // and an unrolled loop spilled 40 bytes.)
        const int rc_shift = tm_dy.shift(dr0 & 7);
        const uint8_t* rc_row0 = st + C::kABytes + C::kDyBytes + (dr0 & 7) * C::kRcBoxBytes + dpc * 16;
#pragma unroll(G == 128 && kNmb == 4 ? 1 : kDbPer)
        for (int m = 0; m < (kProbe == 7 || kProbe == 10 ? 0 : kDbPer); ++m) {
          const int r = dr0 + kDbRowStep * m;
          const uint4* p = reinterpret_cast<const uint4*>(rc_row0 + (r >> 3) * C::Seg::kRawRowBytes);
          uint4 v = shift_chunk(p[0], p[1], rc_shift);
          if (bc * 64 + r >= B) v = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(st + C::kABytes + C::dy_chunk(r, dpc)) = v;
          add8<T>({v.x, v.y, v.z, v.w}, dsum);
        }
        if constexpr (kProbe != 8 && kProbe != 10) fence_proxy_async();
        if constexpr (kProbe != 9 && kProbe != 10) named_barrier(kDbThreads == 256 ? 6 : 7 + cw, kDbThreads);
      } else if constexpr (kTma && kProbe != 6) {
        fence_proxy_async();  // (the gathered rows were written by cp.async: the generic proxy)
      }
      const uint32_t as = smem_u32(base + s * kStageBytes);
      const uint32_t ds = as + C::kABytes;
      // The stage's descriptors, once: each MMA's is one of these at its tile's offset
      // (desc_offset), rather than two descriptors built per MMA (~15 instructions per MMA).
      const uint64_t da0 = make_desc(as, 16, 1024, Swizzle::k128B), dd0 = make_desc(ds, 8192, kBSbo, kBSwz);
#pragma unroll
      for (int m = 0; m < kMaxMB; ++m) fence_regs(acc[m]);
      wgmma_fence();
#pragma unroll
      for (int m = 0; m < kMaxMB; ++m) {
        const int mb = split_m ? cw + 2 * m : m;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          mma_ss_kmn<T, G>(desc_offset(da0, mb * 8192 + kk * 32), desc_offset(dd0, kk * 16 * C::kRowBytes), acc[m],
                           true);
        }
      }
      wgmma_commit();
      if constexpr (kDbC && !kRc) {  // (the MMAs read the tile too; this stage is released a step later)
        const uint8_t* dtile = base + s * kStageBytes + C::kABytes;
#pragma unroll
        for (int m = 0; m < kDbPer; ++m) {
          const uint4 v = *reinterpret_cast<const uint4*>(dtile + C::dy_chunk(dr0 + kDbRowStep * m, dpc));
          add8<T>({v.x, v.y, v.z, v.w}, dsum);
        }
      }
      if (prev >= 0) {
        wgmma_wait<1>();
        release(&empty[prev], lane);
      }
      prev = s;
    }
    wgmma_wait<0>();
#pragma unroll
    for (int m = 0; m < kMaxMB; ++m) fence_regs(acc[m]);
    if (kProbe != 3 && prev >= 0) release(&empty[prev], lane);
    if constexpr (kDbC) {
      // dbias of group g over the nr threads that worked on it (both computing warpgroups with
      // split_m or split_b, else this one; their partials sit at rows rbase .. of red): label
      // lab is summed by the nr / G threads rt = lab (nr / G) + part, each over the partials of
      // the threads with its chunk (dpc = lab / 8), rt' = lab / 8 + (G / 8) (part + (nr / G) k),
      // k < 8 (128 is a multiple of G / 8, so a thread's dpc is also rt' mod G / 8), then by a
      // shuffle tree within those lanes: a fixed order.
      // split_b: the partials of the warpgroup that took the group's even batch chunks go to rows
      // 0-127 whichever warpgroup that was, so that the sum's order does not depend on where the
      // group sits in its CTA (i.e. on the SM count).
      const int nr = split_m || split_b ? 256 : 128, rbase = nr == 256 ? 0 : 128 * cw, rt = ct - rbase;
      const int bar = nr == 256 ? 3 : 4 + cw;  // (the warpgroups of alternate groups reduce apart)
      const int wrow = split_b ? ct ^ (128 * (((g - g_begin) * nbc) & 1)) : ct;
#pragma unroll
      for (int q = 0; q < 8; ++q) red[wrow * 8 + q] = dsum[q];
      named_barrier(bar, nr);
      const int tpl = nr / G;  // threads per label (8, 4, 2; alternate groups: 4, 2, 1)
      const int lab = rt / tpl, part = rt % tpl;
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) sum += red[(rbase + (lab >> 3) + (G / 8) * (part + tpl * k)) * 8 + (lab & 7)];
      for (int off = tpl / 2; off >= 1; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const int64_t l = int64_t(g) * G + lab;
      if (db != nullptr && part == 0 && l < L) db[l] = from_float<T>(sum);
      named_barrier(bar, nr);  // read before the next group's partials
    }
    if (split_b) {  // the second warpgroup's partial to the first, which adds it and stores
      const int tl = threadIdx.x & 127;
      if (cw == 1) {
#pragma unroll
        for (int i = 0; i < G / 2; ++i) part[i * 128 + tl] = acc[0][i];
      }
      named_barrier(2, 256);
      if (cw == 0) {
#pragma unroll
        for (int i = 0; i < G / 2; ++i) acc[0][i] += part[i * 128 + tl];
      }
      named_barrier(2, 256);  // read before the next group's write
      if (cw == 1) continue;
    }
    // acc[m][4j + 2h + e] = dW[label 8j + 2t + e][k-slot mb * 64 + 16 warp + 2 ra + h].
#pragma unroll
    for (int m = 0; m < kMaxMB; ++m) {
      const int ks = (split_m ? cw + 2 * m : m) * 64 + 16 * warp + 2 * ra;
#pragma unroll
      for (int j = 0; j < G / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t l = int64_t(g) * G + 8 * j + 2 * t + e;
          if (l < L)
            *reinterpret_cast<uint32_t*>(dw + l * K + ks) = pack2<T>(acc[m][4 * j + e], acc[m][4 * j + 2 + e]);
        }
    }
  }
}

// x [B, H] -> x^T [H, Bp], rows B..Bp-1 zero.
template <class T>
__global__ void transpose_pad(const T* __restrict__ x, T* __restrict__ xt, int B, int H, int Bp) {
  __shared__ T tile[32][33];
  const int b0 = blockIdx.x * 32, f0 = blockIdx.y * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int b = b0 + i, f = f0 + threadIdx.x;
    tile[i][threadIdx.x] = (b < B && f < H) ? x[int64_t(b) * H + f] : from_float<T>(0.f);
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int f = f0 + i, b = b0 + threadIdx.x;
    if (f < H && b < Bp) xt[int64_t(f) * Bp + b] = tile[threadIdx.x][i];
  }
}

// ================================================================== dx
template <int G>
struct DxCfg {
  static constexpr int kBM = 32;
  static constexpr uint32_t kWBytes = G * 128;
  static constexpr uint32_t kIdxBytes = kKC * 4;
  // B operand (dY tile [32 batch][G labels], K-major): SW64 rows for G = 32, else SW128
  // atoms of 64 labels (32 rows x 128 bytes = 4 KB each).
  static constexpr int kRowBytes = G == 32 ? 64 : 128;
  static constexpr uint32_t kDyBytes = kBM * G * 2;
  using Seg = SegmentTile<kBM, G>;
  static constexpr int64_t kDyStageBytes = round1k(kDyBytes + Seg::kRawBytes);  // placed tile | raw rows
  __host__ __device__ static int64_t acc_bytes(int64_t H) { return round1k(H * kBM * 4); }
  static int64_t smem_bytes(int64_t H, int wstages, int dstages) {
    return kSmemSlack + acc_bytes(H) + wstages * int64_t(kWBytes + kIdxBytes) + dstages * kDyStageBytes +
           2 * (wstages + dstages) * 8;
  }
  // Offset of chunk c (labels 8c..8c+7) of tile row n.
  __device__ static uint32_t dy_chunk(int n, int c) {
    if constexpr (G == 32) return swz<64>(n, 16 * c);
    else return uint32_t(c >> 3) * 4096u + swz<128>(n, 16 * (c & 7));
  }
  // k16 step kk of the labels: the descriptor's start offset.
  __device__ static uint32_t dy_kstep(int kk) {
    if constexpr (G == 32) return kk * 32;
    else return uint32_t(kk >> 2) * 4096u + (kk & 3) * 32;
  }
};

// The dx kernels' fp32 accumulator [H][kBM] (SW128 rows): zeroed by the whole CTA, and
// written out by the two computing warpgroups (threads 128..383) as the fp32 partial of
// this CTA's group range, or as dx itself.
template <int kBM>
__device__ __forceinline__ void zero_accumulator(uint8_t* accs, int H) {
  for (int e = threadIdx.x; e < H * kBM / 4; e += kThreads)
    reinterpret_cast<float4*>(accs)[e] = make_float4(0.f, 0.f, 0.f, 0.f);
}
template <class T, int kBM>
__device__ __forceinline__ void write_dx_tile(const uint8_t* accs, float* __restrict__ part, T* __restrict__ dx,
                                              int B, int H, int b0) {
  const int tid = threadIdx.x - 128;
  const int rows = min(kBM, B - b0);
  for (int e = tid; e < rows * H; e += 256) {
    const int r = e / H, f = e - r * H;
    const float v = *reinterpret_cast<const float*>(accs + swz<128>(f, r * 4));
    const int64_t o = int64_t(b0 + r) * H + f;
    if (part != nullptr) part[int64_t(blockIdx.x) * B * H + o] = v;
    else dx[o] = from_float<T>(v);
  }
}

// Tile row of batch row r (and back: the map is its own inverse). Accumulator column
// 8j + 2t + e of lane t then holds batch row 8t + 2j + e: each lane owns 8 consecutive
// batch rows, and the scatter into the [H][32] accumulator is two 16-byte accesses.
__device__ __forceinline__ int dx_tile_row(int r) { return (r & 1) | ((r & 0x6) << 2) | ((r & 0x18) >> 2); }

template <class T, int G>
__global__ void __launch_bounds__(kThreads, 1)
gsl_dx_sm90(const __grid_constant__ CUtensorMap tm_w, const T* __restrict__ dy, const int32_t* __restrict__ idx,
            float* __restrict__ part, T* __restrict__ dx, int B, int H, int64_t L, int K, int groups_per_split,
            int num_groups, int wstages, int dstages) {
  using C = DxCfg<G>;
  using Seg = typename C::Seg;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_smem(smem_raw);
  uint8_t* accs = base;                                      // [H][32] fp32, SW128 rows
  uint8_t* wst = accs + C::acc_bytes(H);                     // [wstages][G][64] SW128
  uint8_t* dst = wst + int64_t(wstages) * C::kWBytes;        // [dstages] dY tiles and raw rows
  int32_t* ist = reinterpret_cast<int32_t*>(dst + int64_t(dstages) * C::kDyStageBytes);  // [wstages][64]
  uint64_t* wfull = reinterpret_cast<uint64_t*>(ist + wstages * kKC);
  uint64_t* wempty = wfull + wstages;
  uint64_t* dfull = wempty + wstages;
  uint64_t* dempty = dfull + dstages;

  const int b0 = blockIdx.y * C::kBM;
  const int g_begin = blockIdx.x * groups_per_split;
  const int g_end = min(g_begin + groups_per_split, num_groups);
  const int nk = K / kKC;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < wstages; ++s) {
      mbar_init(&wfull[s], 1);
      mbar_init(&wempty[s], 4);  // the warps of the warpgroup that used the chunk
    }
    for (int s = 0; s < dstages; ++s) {
      mbar_init(&dfull[s], 96);  // the dY loader threads (warps 1-3)
      mbar_init(&dempty[s], 8);  // all warps of both computing warpgroups
    }
    fence_barrier_init();
    prefetch_tensormap(&tm_w);
  }
  zero_accumulator<C::kBM>(accs, H);
  __syncthreads();

  if (wg == 0) {
    if (threadIdx.x < 32) {
      // Warp 0, one lane: weight boxes and index chunks by TMA.
      if (threadIdx.x == 0) {
        int wit = 0;
        for (int g = g_begin; g < g_end; ++g) {
          for (int c = 0; c < nk; ++c, ++wit) {
            const int s = wit % wstages;
            mbar_wait(&wempty[s], ((wit / wstages) & 1) ^ 1, 30);
            mbar_arrive_expect_tx(&wfull[s], C::kWBytes + C::kIdxBytes);
            tma_load_2d(wst + s * C::kWBytes, &tm_w, &wfull[s], c * kKC, g * G);
            bulk_load(ist + s * kKC, idx + int64_t(g) * K + c * kKC, C::kIdxBytes, &wfull[s]);
          }
        }
      }
      return;
    }
    // Warps 1-3: dY tiles, software-pipelined (copies issued `ahead` groups before the
    // tile is placed).
    const int tid = threadIdx.x - 32;
    const int ahead = min(dstages - 1, 8);
    const int total = g_end - g_begin;
    float unused[8];
    for (int i = 0; i < total + ahead; ++i) {
      if (i < total) {
        const int s = i % dstages;
        mbar_wait(&dempty[s], ((i / dstages) & 1) ^ 1, 31);
        Seg::load(dst + s * C::kDyStageBytes + C::kDyBytes, dy, B, L, b0, int64_t(g_begin + i) * G, tid, 96);
        cp_async_commit();
      }
      const int j = i - ahead;
      if (j < 0) continue;
      cp_async_wait(i < total ? ahead : 0);
      named_barrier(3, 96);  // every loader thread's copies of group j have landed
      uint8_t* ds = dst + (j % dstages) * C::kDyStageBytes;
      const int64_t l0 = int64_t(g_begin + j) * G;
      for (int e = tid; e < C::kBM * (G / 8); e += 96) {
        const int n = e / (G / 8), c = e - n * (G / 8);
        const uint4 v = Seg::template chunk<T, false>(ds + C::kDyBytes, B, L, b0, l0, dx_tile_row(n), c, unused);
        *reinterpret_cast<uint4*>(ds + C::dy_chunk(n, c)) = v;
      }
      fence_proxy_async();
      mbar_arrive(&dfull[j % dstages]);
    }
    return;
  }

  const int cw = wg - 1;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int lrow = (lane & 7) + ((lane >> 4) << 3);   // label row within a k16 step
  const int kchunk = 2 * warp + ((lane >> 3) & 1);    // which 8 k-slots of the 64-wide chunk
  const int t = lane & 3, r0 = 16 * warp + (lane >> 2);
  constexpr uint32_t kBSbo = C::kRowBytes * 8;
  constexpr Swizzle kBSwz = G == 32 ? Swizzle::k64B : Swizzle::k128B;
  for (int g = g_begin, j = 0; g < g_end; ++g, ++j) {
    const int ds_i = j % dstages;
    mbar_wait(&dfull[ds_i], (j / dstages) & 1, 32);
    const uint32_t dsb = smem_u32(dst + ds_i * C::kDyStageBytes);
    bool ordered = false;
    for (int c = cw; c < nk; c += 2) {
      const int wit = j * nk + c;
      const int s = wit % wstages;
      mbar_wait(&wfull[s], (wit / wstages) & 1, 33);
      const uint32_t wb = smem_u32(wst + s * C::kWBytes);
      uint32_t a[G / 16][4];
#pragma unroll
      for (int kk = 0; kk < G / 16; ++kk) ldmatrix_x4_trans(a[kk], wb + swz<128>(kk * 16 + lrow, kchunk * 16));
      float acc[C::kBM / 2];
      fence_regs(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < G / 16; ++kk)
        mma_rs<T, C::kBM>(a[kk], make_desc(dsb + C::dy_kstep(kk), 16, kBSbo, kBSwz), acc, kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc);
      const int32_t* is = ist + s * kKC;
      const int f0 = is[r0], f1 = is[r0 + 8];
      release(&wempty[s], lane);
      if (!ordered) {
        named_barrier(1, 256);  // every scatter of the previous group is done
        ordered = true;
      }
      // acc[4q + 2h + e] = P^T[k-slot r0 + 8h][batch 8t + 2q + e]: batch rows 8t..8t+7
      // of feature f_h, i.e. 16-byte chunks 2t and 2t + 1 of its accumulator row.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t f = uint32_t(h ? f1 : f0);
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          float4* p = reinterpret_cast<float4*>(accs + ((f * 128 + (2 * t + v) * 16) ^ ((f & 7) << 4)));
          float4 cur = *p;
          cur.x += acc[8 * v + 2 * h];
          cur.y += acc[8 * v + 2 * h + 1];
          cur.z += acc[8 * v + 4 + 2 * h];
          cur.w += acc[8 * v + 4 + 2 * h + 1];
          *p = cur;
        }
      }
    }
    if (!ordered) named_barrier(1, 256);
    release(&dempty[ds_i], lane);
  }
  named_barrier(1, 256);
  write_dx_tile<T, C::kBM>(accs, part, dx, B, H, b0);
}

// ================================================================== dx, v2
// (the default where dY's row stride is a multiple of 8 and K is 64, 128 or 256; 1.8-2.1x faster than v1 on an
// H200, bench/NOTES.md; LARGEOUT_SM90_DX=v1 forces v1.) CTA = (32 batch
// rows, a range of whole units of groups). The loader thread issues per unit one dY tile
// (TMA boxes [32 rows][64 labels]) and per stage one 3-D weight box and the unit's index
// chunks (as the forward). Both computing warpgroups consume every slot: warpgroup w owns
// batch rows 16w..16w+15 of the tile, so P^T[64 k-slots][16 batch] = W_g^T dY_g^T
// (m64n16 wgmma, A from W by ldmatrix.trans) and its scatter into the fp32 accumulator
// [H][32] touch columns no other warpgroup touches: no barrier between the warpgroups.
// Inside a warpgroup, steps of one group hit distinct features (indices are unique within
// a group); a named barrier separates the scatters of different groups (a fixed order:
// deterministic). The MMAs of step j overlap the scatter of step j - 1.
template <int G, int kNk>
struct Dx2Cfg {
  static constexpr int kBM = 32;
  static constexpr int kU = G >= 64 ? 1 : 64 / G;
  static constexpr int kRows = kU * G;  // labels of a unit: 64 or 128
  static constexpr int kNs = kNk < 16384 / (kRows * 128) ? kNk : 16384 / (kRows * 128);
  static constexpr int kQs = kNk / kNs;
  static constexpr uint32_t kWBytes = kRows * kNs * 128;
  static constexpr uint32_t kIdxBytes = kU * kNs * kKC * 4;
  static constexpr uint32_t kDyBytes = kBM * kRows * 2;  // kRows / 64 boxes of [32][64], SW128
  static_assert(kWBytes % 1024 == 0 && kDyBytes % 1024 == 0, "tiles must stay 1024-byte aligned");
  // Row classes (rc, where dY's row stride is not a multiple of 8; DyMaps): per dY stage the raw
  // rows, one box of [4 rows][kRows + 8 labels] per class (tile rows c, c + 8, c + 16, c + 24),
  // each at a 128-byte boundary.
  static constexpr uint32_t kRcRowBytes = (kRows + 8) * 2;
  static constexpr uint32_t kRcBoxBytes = (4 * kRcRowBytes + 127) / 128 * 128;
  static constexpr uint32_t kRcBytes = 8 * kRcBoxBytes;
  static_assert(kRcBytes % 1024 == 0, "raw rows keep the index rows after them aligned");
  __host__ __device__ static int64_t acc_bytes(int64_t H) { return round1k(H * kBM * 4); }
  // w8: one more barrier per W stage; rc: raw rows and one more barrier per dY stage
  static int64_t smem_bytes(int64_t H, int wst, int dst, bool w8 = false, bool rc = false) {
    return kSmemSlack + acc_bytes(H) + wst * int64_t(kWBytes) + dst * int64_t(kDyBytes) + wst * int64_t(kIdxBytes) +
           2 * (wst + dst) * 8 + (w8 ? wst * 8 : 0) + (rc ? dst * (int64_t(kRcBytes) + 8) : 0);
  }
};

// kProbe (timing probes of bench/probe_fwd.py --passes dx; 0 in the library; the results
// are then wrong): 1 = no scatter into the accumulator, 2 = no MMAs, 3 = no ldmatrix of W.
// kW8 (T = bf16): the weight is fp8 (e4m3fn where e4m3, else e5m2), times row_scale[l]
// where row_scale is not null, upcast in place in each stage as in the forward.
// kRc (16-bit weights; where dY's row stride is not a multiple of 8, unless LARGEOUT_SM90_DX_RC=0,
// which leaves it to v1): the loader thread brings a unit's dY rows as eight row-class boxes (DyMaps)
// into the stage's raw rows (barrier draw); warps 1-3 of the loader warpgroup shift them into
// the tile TMA would have written (zero past B) and arrive on dfull.
template <class T, int G, int kNk, int kProbe = 0, bool kW8 = false, bool kRc = false>
__global__ void __launch_bounds__(kThreads, 1)
gsl_dx2_sm90(const __grid_constant__ CUtensorMap tm_w, const __grid_constant__ DyMaps tm_dy,
             const int32_t* __restrict__ idx, float* __restrict__ part, T* __restrict__ dx, int B, int H, int64_t L,
             int groups_per_split, int num_groups, int wst, int dst, const float* __restrict__ row_scale, int e4m3) {
  static_assert(!kW8 || (std::is_same_v<T, __nv_bfloat16> && kProbe == 0), "fp8 weights: bf16, no probes");
  static_assert(!kRc || (!kW8 && kProbe == 0), "row classes: 16-bit weights (warps 1-3 place dY), no probes");
  using C = Dx2Cfg<G, kNk>;
  constexpr int K = kNk * kKC, kU = C::kU, kNs = C::kNs, kQs = C::kQs;
  constexpr int kIdxInts = C::kIdxBytes / 4;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_smem(smem_raw);
  uint8_t* accs = base;                                              // [H][32] fp32, SW128 rows
  uint8_t* wsl = accs + C::acc_bytes(H);                             // [wst][kNs][kRows][64] SW128
  uint8_t* dsl = wsl + int64_t(wst) * C::kWBytes;                    // [dst][kRows / 64][32][64] SW128
  uint8_t* rsl = dsl + int64_t(dst) * C::kDyBytes;                   // kRc: [dst][8 classes][4][kRows + 8]
  int32_t* ist = reinterpret_cast<int32_t*>(rsl + (kRc ? int64_t(dst) * C::kRcBytes : 0));  // [wst][kU][kNs * 64]
  uint64_t* wfull = reinterpret_cast<uint64_t*>(ist + wst * kIdxInts);
  uint64_t* wempty = wfull + wst;
  uint64_t* dfull = wempty + wst;
  uint64_t* dempty = dfull + dst;
  uint64_t* wraw = dempty + dst;  // kW8: a weight stage's codes and indices have landed
  uint64_t* draw = wraw + (kW8 ? wst : 0);  // kRc: a dY stage's raw rows have landed

  const int b0 = blockIdx.y * C::kBM;
  const int g_begin = blockIdx.x * groups_per_split;
  const int g_end = min(g_begin + groups_per_split, num_groups);
  const int g_pad = g_begin < g_end ? g_begin + (g_end - g_begin + kU - 1) / kU * kU : g_begin;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < wst; ++s) {
      mbar_init(&wfull[s], kW8 ? 3 : 1);  // kW8: one arrival per upcasting warp
      mbar_init(&wempty[s], 8);  // every warp of both computing warpgroups
      if constexpr (kW8) mbar_init(&wraw[s], 1);
    }
    for (int s = 0; s < dst; ++s) {
      mbar_init(&dfull[s], kRc ? 3 : 1);  // kRc: one arrival per placing warp
      mbar_init(&dempty[s], 8);
      if constexpr (kRc) mbar_init(&draw[s], 1);
    }
    fence_barrier_init();
    prefetch_tensormap(&tm_w);
#pragma unroll
    for (int c = 0; c < (kRc ? 8 : 1); ++c) prefetch_tensormap(&tm_dy.m[c]);
  }
  zero_accumulator<C::kBM>(accs, H);
  __syncthreads();

  if (wg == 0) {
    if (threadIdx.x == 0) {
      // (the weight stages in the order UnitStages gives the upcasting warps too)
      UnitStages stages{1, wst, kQs}, dys{1, dst, 1};
      for (int gu = g_begin; gu < g_pad; gu += kU, stages.next_unit(), dys.next_unit()) {
        int d = 0;
        uint32_t dparity = 0;
        dys.stage(0, d, dparity);
        mbar_wait(&dempty[d], dparity ^ 1, 40);
        if constexpr (kRc) {  // class c's rows b0 / 8 .. b0 / 8 + 3: tile rows c + 8 i
          mbar_arrive_expect_tx(&draw[d], 8 * 4 * C::kRcRowBytes);
#pragma unroll
          for (int c = 0; c < 8; ++c)
            tma_load_2d(rsl + d * C::kRcBytes + c * C::kRcBoxBytes, &tm_dy.m[c], &draw[d], gu * G, b0 / 8);
        } else {
          mbar_arrive_expect_tx(&dfull[d], C::kDyBytes);
#pragma unroll
          for (int bx = 0; bx < C::kRows / 64; ++bx)
            tma_load_2d(dsl + d * C::kDyBytes + bx * 2048 * 2, &tm_dy.m[0], &dfull[d], gu * G + 64 * bx, b0);
        }
        for (int q = 0; q < kQs; ++q) {
          int s = 0;
          uint32_t parity = 0;
          stages.stage(q, s, parity);
          mbar_wait(&wempty[s], parity ^ 1, 41);
          load_unit_stage<C, G, K, kW8>(wsl + s * C::kWBytes, ist + s * kIdxInts, &tm_w, kW8 ? &wraw[s] : &wfull[s],
                                        idx, gu, q, num_groups);
        }
      }
    }
    if constexpr (kW8) {
      if (threadIdx.x >= 32) {
        upcast_stages<C, G>(wsl, wraw, wfull, row_scale, e4m3 != 0, L, g_begin, g_pad, UnitStages{1, wst, kQs});
      }
    }
    if constexpr (kRc) {
      if (threadIdx.x >= 32) {
        // Each unit's dY tile from its raw rows: 16-byte chunk e of the tile (row e / (kRows / 8),
        // labels 8 (e % (kRows / 8)) ..) by thread e mod 96, zero past B; then the proxy fence (the
        // MMAs read the tile) and one arrival per warp.
        constexpr int kCpr = C::kRows / 8;  // chunks per row
        const int pt = threadIdx.x - 32;
        RingPos dp{0, 0};
        for (int gu = g_begin; gu < g_pad; gu += kU) {
          const int d = dp.slot;
          mbar_wait(&draw[d], dp.phase, 45);
          dp.advance(1, dst);
          const uint8_t* raw = rsl + d * C::kRcBytes;
          uint8_t* tile = dsl + d * C::kDyBytes;
          for (int e = pt; e < 32 * kCpr; e += 96) {
            const int r = e / kCpr, c = e - r * kCpr;
            const uint4* src =
                reinterpret_cast<const uint4*>(raw + (r & 7) * C::kRcBoxBytes + (r >> 3) * C::kRcRowBytes) + c;
            uint4 v = shift_chunk(src[0], src[1], tm_dy.shift(r & 7));
            if (b0 + r >= B) v = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4*>(tile + (c >> 3) * 4096 + swz<128>(r, 16 * (c & 7))) = v;
          }
          fence_proxy_async();
          release(&dfull[d], threadIdx.x & 31);
        }
      }
    }
    return;
  }

  // batch rows 16 cw .. 16 cw + 15 of the tile (cw from lane 0, known to the compiler to be
  // warp-uniform: the tiles' addresses and the MMAs' descriptors stay in uniform registers)
  const int cw = __shfl_sync(0xffffffffu, wg, 0) - 1;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int lrow = (lane & 7) + ((lane >> 4) << 3);  // label row within a k16 step
  const int kchunk = 2 * warp + ((lane >> 3) & 1);   // which 8 k-slots of the 64-wide chunk
  const int t = lane & 3, r0 = 16 * warp + (lane >> 2);
  auto arrive = [&](uint64_t* bar) {  // one arrival per warp
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };
  // P^T fragment: p[4 jj + 2 h + e] = (k-slot r0 + 8 h, batch column 16 cw + 8 jj + 2 t + e).
  auto scatter = [&](const float (&p)[8], int f0, int f1) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t f = uint32_t(h ? f1 : f0);
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const uint32_t chunk = uint32_t(4 * cw + 2 * jj + (t >> 1)) ^ (f & 7u);
        float2* a = reinterpret_cast<float2*>(accs + f * 128u + (chunk << 4) + uint32_t(t & 1) * 8u);
        float2 cur = *a;
        cur.x += p[4 * jj + 2 * h];
        cur.y += p[4 * jj + 2 * h + 1];
        *a = cur;
      }
    }
  };
  constexpr int kSteps = kQs * kU * kNs;  // per unit: (stage q, group u, chunk cc)
  // Group (within the unit) of step s; a named barrier precedes the scatter of a step
  // whose group differs from the previously scattered step's.
  auto group_of = [](int step) { return (step / kNs) % kU; };
  auto scatter_step = [&](const float (&p)[8], int f0, int f1, int step) {
    if (step == 0 || group_of(step) != group_of(step - 1)) named_barrier(2 + cw, 128);
    if constexpr (kProbe == 1) {  // keep the values live, write nothing
      float z = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) z += p[i];
      if (z == 1234.5f) accs[f0 & 127] = 1;
    } else {
      scatter(p, f0, f1);
    }
  };
  float pr[2][8];
  int pf0 = 0, pf1 = 0;  // features of the step whose P waits to be scattered
  // The rings' positions (unit n's dY tile in slot n % dst, its stage q in slot (n kQs + q) %
  // wst, as the loader has them), kept by increments: no divisions per unit.
  RingPos dpos{0, 0}, wpos{0, 0};
  for (int gu = g_begin; gu < g_pad; gu += kU) {
    const int d = dpos.slot;
    mbar_wait(&dfull[d], dpos.phase, 42);
    dpos.advance(1, dst);
    const uint32_t dyb = smem_u32(dsl + d * C::kDyBytes);
    // This warpgroup's descriptor of the tile: each MMA's is this at its k16 step's offset
    // (desc_offset).
    const uint64_t ddesc = make_desc(dyb + uint32_t(cw) * 2048u, 16, 1024, Swizzle::k128B);
    int prev_s = 0;  // the slot of the unit's previous stage
#pragma unroll
    for (int q = 0; q < kQs; ++q) {
      const int s = wpos.slot, parity = wpos.phase;
      wpos.advance(1, wst);
      mbar_wait(&wfull[s], parity, 43);
      if constexpr (kW8) mbar_wait(&wraw[s], parity, 44);  // the indices' copy (as the forward)
      const uint32_t wsb = smem_u32(wsl + s * C::kWBytes);
      const int32_t* is = ist + s * kIdxInts;
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int cc = 0; cc < kNs; ++cc) {
          const int j = (q * kU + u) * kNs + cc;
          // A = W_g^T of this chunk ([64 k-slots][G labels]) from rows u G .. u G + G - 1.
          uint32_t a[G / 16][4];
          const uint32_t plane = wsb + uint32_t(cc * C::kRows) * 128u;
#pragma unroll
          for (int kk = 0; kk < G / 16; ++kk) {
            if constexpr (kProbe == 3) {
#pragma unroll
              for (int e = 0; e < 4; ++e) a[kk][e] = 0x3f803f80u ^ uint32_t(is[0] & 1);
            } else {
              ldmatrix_x4_trans(a[kk], plane + swz<128>(u * G + kk * 16 + lrow, kchunk * 16));
            }
          }
          float (&acc)[8] = pr[j & 1];
          fence_regs(acc);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < G / 16; ++kk) {
            const int l0 = u * G + kk * 16;  // first label of the k16 step within the unit
            const uint32_t off = uint32_t(l0 >> 6) * 4096u + uint32_t(l0 & 63) * 2u;  // from this warpgroup's rows
            if constexpr (kProbe == 2) {
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[e] = __uint_as_float(a[kk][e & 3]);
            } else {
              mma_rs<T, 16>(a[kk], desc_offset(ddesc, off), acc, kk > 0);
            }
          }
          wgmma_commit();
          const int f0 = is[(u * kNs + cc) * kKC + r0], f1 = is[(u * kNs + cc) * kKC + r0 + 8];
          if (j > 0) {
            wgmma_wait<1>();  // step j - 1 is done
            float (&prev)[8] = pr[(j + 1) & 1];
            fence_regs(prev);
            // Its stage is free if it was the stage's last step (its ldmatrix reads ended
            // before its MMAs were issued).
            if (u == 0 && cc == 0) arrive(&wempty[prev_s]);
            scatter_step(prev, pf0, pf1, j - 1);
          }
          pf0 = f0, pf1 = f1;
        }
      prev_s = s;
    }
    // The unit's last step: its MMAs, then free its stage and the dY tile, then its scatter.
    wgmma_wait<0>();
    fence_regs(pr[(kSteps - 1) & 1]);
    arrive(&wempty[prev_s]);
    arrive(&dempty[d]);
    scatter_step(pr[(kSteps - 1) & 1], pf0, pf1, kSteps - 1);
  }
  named_barrier(1, 256);
  write_dx_tile<T, C::kBM>(accs, part, dx, B, H, b0);
}

// ================================================================== dx, v3 (expanded weights)
// dx = dY W_exp, where W_exp [L, H] holds each label's weights at its group's inputs
// (W_exp[l, idx[g(l), k]] = W[l, k], zero elsewhere): a dense GEMM over the labels with no
// scatter of results, built tile by tile in shared memory. CTA = (128 batch rows, 256
// features, a range of 64-label units). Per unit the loader thread (thread 0) brings the
// dY tile [128 rows][64 labels] (TMA, SW128, the A operand), the unit's weight rows [64][K]
// and index rows (bulk copies) into a ring of kStages; warpgroup 0 builds
// W_exp[64 labels][256 features] (the MN-major B operand: SW128 blocks of 64 features) in
// a ring of two tiles while warpgroups 1 and 2 accumulate D[64 rows][256 features] +=
// dY W_exp with four m64n256k16 wgmma each on the previous unit. Unit ranges (splits)
// write fp32 partials summed in a fixed order: deterministic. The default for G <= 64 and
// K >= 128, where it measured faster than v2 (bench/NOTES.md; two expanding warpgroups
// with 192-feature slices measured slower).
// kProbe (timing probes; 0 in the library): 1 = no scatter (the tile is only zeroed; wrong
// results), 2 = no MMAs (wrong results), 3 = the expanding threads' previous mapping. (A
// variant whose computing warpgroups zeroed each tile after their MMAs on it measured 1.1x
// slower at G = 32 and 64: bench/NOTES.md.)
// kW8 (T = bf16): the weight is fp8 (e4m3fn where e4m3, else e5m2), times row_scale[l]
// where row_scale is not null: its rows come as codes (half the bytes) and the expanding
// warpgroup upcasts them as it reads them (the values of largeout's fp8_to_bf16 op).
template <int kNk>
struct Dx3Cfg {
  static constexpr int K = kNk * kKC, kHS = 256, kExpThreads = 128;
  static constexpr int kBM = 128, kUnit = 64;
  static constexpr uint32_t kDyBytes = kBM * kUnit * 2;
  static constexpr uint32_t kWBytes = kUnit * K * 2;
  static constexpr uint32_t kIdxBytes = 2 * K * 4;  // at most two groups per unit (G >= 32)
  static constexpr uint32_t kStageBytes = uint32_t(round1k(kDyBytes + kWBytes + kIdxBytes));
  static constexpr uint32_t kExpBytes = kUnit * kHS * 2;
  static constexpr int kStages = kNk == 4 ? 3 : 4;
  // Expanding threads: kCT along a row's 8-element chunks, kRC row classes (a thread's
  // rows are rc, rc + kRC, ...: all with the same row mod 8, so one swizzle for all of
  // them), kPass chunk passes, kRows rows each.
  static constexpr int kCT = kNk == 1 ? 8 : 16, kRC = kExpThreads / kCT, kPass = K / 8 / kCT, kRows = kUnit / kRC;
  static_assert(kRC % 8 == 0 && kRows >= 1, "row classes must keep the row mod 8");
  static constexpr int64_t smem_bytes() {
    return kSmemSlack + int64_t(kStages) * kStageBytes + 2 * int64_t(kExpBytes) + (kStages + 4) * 8;
  }
};

template <class T, int G, int kNk, int kProbe = 0, bool kW8 = false>
__global__ void __launch_bounds__(kThreads, 1)
gsl_dx3_sm90(const __grid_constant__ CUtensorMap tm_dy, const void* __restrict__ weight,
             const int32_t* __restrict__ idx, float* __restrict__ part, T* __restrict__ dx, int B, int H, int64_t L,
             int units_per_split, int num_groups, const float* __restrict__ row_scale, int e4m3) {
  static_assert(!kW8 || std::is_same_v<T, __nv_bfloat16>, "fp8 weights: bf16");
  using C = Dx3Cfg<kNk>;
  constexpr int K = C::K, S = C::kStages, kHS = C::kHS;
  constexpr int kWElem = kW8 ? 1 : 2;  // bytes per weight element in global memory and in the stage
  constexpr int kGU = G >= 64 ? 1 : 64 / G;  // groups per unit
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_smem(smem_raw);
  uint8_t* stages = base;                       // [S][dY tile | W rows | index rows]
  uint8_t* exps = stages + S * C::kStageBytes;  // [2][kHS / 64 blocks][64 labels][64 features] SW128
  uint64_t* full = reinterpret_cast<uint64_t*>(exps + 2 * C::kExpBytes);
  uint64_t* efull = full + S;
  uint64_t* eempty = efull + 2;

  const int n_h = int(cdiv(H, kHS));
  const int h0 = (blockIdx.x % n_h) * kHS, b0 = (blockIdx.x / n_h) * C::kBM;
  const int64_t num_units = cdiv(L, C::kUnit);
  const int64_t u_begin = int64_t(blockIdx.y) * units_per_split;
  const int64_t u_end = num_units < u_begin + units_per_split ? num_units : u_begin + units_per_split;
  const int n_units = u_end > u_begin ? int(u_end - u_begin) : 0;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;

  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) mbar_init(&full[s], 1);
    for (int e = 0; e < 2; ++e) {
      mbar_init(&efull[e], 4);   // the expanding warps
      mbar_init(&eempty[e], 8);  // the computing warps
    }
    fence_barrier_init();
    prefetch_tensormap(&tm_dy);
  }
  __syncthreads();

  // Stage s <- unit n of this CTA's range.
  auto load_unit = [&](int n) {
    uint8_t* st = stages + (n % S) * C::kStageBytes;
    const int64_t l0 = (u_begin + n) * C::kUnit;
    const int rows = int(L - l0 < C::kUnit ? L - l0 : C::kUnit);
    const int64_t g0 = l0 / G;
    const int groups = int(num_groups - g0 < kGU ? num_groups - g0 : kGU);
    const uint32_t wbytes = uint32_t(rows) * K * kWElem, ibytes = uint32_t(groups) * K * 4;
    mbar_arrive_expect_tx(&full[n % S], C::kDyBytes + wbytes + ibytes);
    tma_load_2d(st, &tm_dy, &full[n % S], int(l0), b0);
    bulk_load(st + C::kDyBytes, static_cast<const uint8_t*>(weight) + l0 * K * kWElem, wbytes, &full[n % S]);
    bulk_load(st + C::kDyBytes + C::kWBytes, idx + g0 * K, ibytes, &full[n % S]);
  };

  if (wg == 0) {
    // Thread -> (chunk c, row class rc): a warp takes 8 chunks x 4 row classes (lanes 8 r ..
    // 8 r + 7: one row's 8 consecutive chunks, conflict-free weight reads). A scatter store
    // then covers 4 row classes of each of 8 features, whose swizzles put the 4 rows of a
    // feature in 4 different banks: fewer conflicts than 16 chunks x 2 row classes (kProbe 3,
    // the mapping before; the same results).
    static_assert(C::kCT % 8 == 0 && C::kRC % 4 == 0 && (C::kCT / 8) * (C::kRC / 4) == 4, "8 x 4 per warp");
    constexpr int kWpc = C::kRC / 4;  // warps per block of 8 chunks
    const int t = threadIdx.x;
    const int c = kProbe == 3 ? t % C::kCT : 8 * (warp / kWpc) + (lane & 7);
    const int rc = kProbe == 3 ? t / C::kCT : 4 * (warp % kWpc) + (lane >> 3);
    // A feature's byte offset in the expanded tile at row rc is its offset at row 0 (see
    // below) with the swizzle's 16-byte chunk bits XOR (rc & 7) << 4, OR rc * 128 (bits 7-10,
    // where the row-0 offset has zeros).
    const uint32_t rc_xor = uint32_t(rc & 7) << 4, rc_or = uint32_t(rc) * 128u;
    if (t == 0)
      for (int n = 0; n < min(S, n_units); ++n) load_unit(n);
    for (int n = 0; n < n_units; ++n) {
      const int e = n & 1;
      mbar_wait(&eempty[e], ((n >> 1) & 1) ^ 1, 50);
      // The stage of unit n - 2 is free (its tile was consumed, its weights expanded).
      if (t == 0 && n >= 2 && n - 2 + S < n_units) load_unit(n - 2 + S);
      uint8_t* ex = exps + e * C::kExpBytes;
      const int64_t l0 = (u_begin + n) * C::kUnit;
      const int rows = int(L - l0 < C::kUnit ? L - l0 : C::kUnit);
      // kW8: the row scales of this thread's rows (1 past the layer, and without scales),
      // loaded before the zeroing and the stage's wait (not measured apart from the forward's
      // change, which made no difference).
      float rsc[C::kRows];
#pragma unroll
      for (int j = 0; j < C::kRows; ++j)
        rsc[j] = kW8 && row_scale != nullptr && rc + C::kRC * j < rows ? __ldg(row_scale + l0 + rc + C::kRC * j) : 1.f;
#pragma unroll
      for (int i = 0; i < int(C::kExpBytes / 16 / C::kExpThreads); ++i)
        reinterpret_cast<float4*>(ex)[t + C::kExpThreads * i] = make_float4(0.f, 0.f, 0.f, 0.f);
      mbar_wait(&full[n % S], (n / S) & 1, 51);
      // The unit's feature indices become, in place, their byte offsets in this slice's tile
      // at row 0 ((h >> 6) blocks of 8 KB, (h & 63) * 2 within the row), or ~0 outside the
      // slice: each index once, instead of once per row class in every thread that uses it
      // (the offset arithmetic, ~10 instructions per index per thread, was a third of the
      // expanding warpgroup's instructions: bench/results/ncu_dx3_sass_G32_s19_h100.csv).
      // (The stage is reloaded only after every expanding thread has passed the next unit's
      // barrier below, after its proxy fence.)
      if constexpr (kProbe != 1) {
        int32_t* iw = reinterpret_cast<int32_t*>(stages + (n % S) * C::kStageBytes + C::kDyBytes + C::kWBytes);
        constexpr int kIdx = kGU * K;  // 64-512 indices
#pragma unroll
        for (int r = 0; r < (kIdx + C::kExpThreads - 1) / C::kExpThreads; ++r) {
          const int i = t + r * C::kExpThreads;
          if (kIdx % C::kExpThreads == 0 || i < kIdx) {
            const uint32_t h = uint32_t(iw[i] - h0);
            iw[i] = int32_t(h < uint32_t(kHS) ? ((h >> 6) << 13) | ((h & 63u) << 1) : ~0u);
          }
        }
      }
      named_barrier(1, C::kExpThreads);  // the tile is zero and the offsets are in place
      if constexpr (kProbe != 1) {
        const uint8_t* st = stages + (n % S) * C::kStageBytes;
        const int32_t* is = reinterpret_cast<const int32_t*>(st + C::kDyBytes + C::kWBytes);
#pragma unroll
        for (int p = 0; p < C::kPass; ++p) {
          const int cc = p * C::kCT + c;  // this thread's chunk: k-slots 8 cc .. 8 cc + 7
          // All the thread's weight chunks first (loads ahead of the stores, which the
          // compiler cannot move loads across).
          uint4 w[C::kRows];
#pragma unroll
          for (int j = 0; j < C::kRows; ++j) {
            const uint8_t* src = st + C::kDyBytes + (rc + C::kRC * j) * (K * kWElem) + cc * 8 * kWElem;
            if constexpr (kW8) {
              const uint2 codes = *reinterpret_cast<const uint2*>(src);
              w[j] = row_scale != nullptr ? fp8x8_to_bf16x8<true>(codes, e4m3 != 0, rsc[j])
                                          : fp8x8_to_bf16x8<false>(codes, e4m3 != 0, 1.f);
            } else {
              w[j] = *reinterpret_cast<const uint4*>(src);
            }
          }
#pragma unroll
          for (int q = 0; q < kGU; ++q) {
            // Byte offsets of the chunk's 8 features in the tile (row rc), and which are in the slice.
            const int4 i0 = *reinterpret_cast<const int4*>(is + q * K + 8 * cc);
            const int4 i1 = *reinterpret_cast<const int4*>(is + q * K + 8 * cc + 4);
            const uint32_t ov[8] = {uint32_t(i0.x), uint32_t(i0.y), uint32_t(i0.z), uint32_t(i0.w),
                                    uint32_t(i1.x), uint32_t(i1.y), uint32_t(i1.z), uint32_t(i1.w)};
            uint32_t off[8];
            uint32_t in = 0;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
              in |= ((ov[k] >> 31) ^ 1u) << k;  // in the slice: below 2^15; outside: ~0
              off[k] = (ov[k] ^ rc_xor) | rc_or;
            }
#pragma unroll
            for (int j = 0; j < C::kRows; ++j) {
              if ((C::kRC * j) / (G >= 64 ? 64 : G) != q) continue;  // row rc + kRC j is in group q
              const uint32_t m = rc + C::kRC * j < rows ? in : 0u;
              const uint32_t wv[4] = {w[j].x, w[j].y, w[j].z, w[j].w};
#pragma unroll
              for (int k = 0; k < 8; ++k)
                if (m & (1u << k))
                  *reinterpret_cast<uint16_t*>(ex + off[k] + C::kRC * 128 * j) =
                      uint16_t((k & 1) ? (wv[k >> 1] >> 16) : (wv[k >> 1] & 0xffffu));
            }
          }
        }
      }
      fence_proxy_async();  // the tile's generic stores before the wgmma reads
      __syncwarp();
      if (lane == 0) mbar_arrive(&efull[e]);
    }
    return;
  }

  // batch rows 64 cw .. 64 cw + 63 of the tile (cw from lane 0, known to the compiler to be
  // warp-uniform: the tiles' addresses and descriptors stay in uniform registers)
  const int cw = __shfl_sync(0xffffffffu, wg, 0) - 1;
  float acc[kHS / 2];
#pragma unroll
  for (int i = 0; i < kHS / 2; ++i) acc[i] = 0.f;
  for (int n = 0; n < n_units; ++n) {
    const int e = n & 1;
    mbar_wait(&full[n % S], (n / S) & 1, 52);
    mbar_wait(&efull[e], (n >> 1) & 1, 53);
    const uint32_t ab = smem_u32(stages + (n % S) * C::kStageBytes) + uint32_t(cw) * 8192u;
    const uint32_t bb = smem_u32(exps + e * C::kExpBytes);
    // The unit's descriptors, once; each MMA's is one of these at its k16 step's offset (desc_offset).
    const uint64_t da = make_desc(ab, 16, 1024, Swizzle::k128B), db = make_desc(bb, 8192, 1024, Swizzle::k128B);
    if constexpr (kProbe != 2) {
      fence_regs(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        mma_ss_kmn<T, kHS>(desc_offset(da, kk * 32), desc_offset(db, kk * 2048), acc, true);
      wgmma_commit();
      wgmma_wait<1>();  // unit n - 1 is done
      fence_regs(acc);
    }
    if (n > 0) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&eempty[(n - 1) & 1]);
    }
  }
  wgmma_wait<0>();
  fence_regs(acc);
  // m64nkHS fragment: acc[4 i + 2 hh + v] = (row 16 warp + lane / 4 + 8 hh, feature 8 i + 2 (lane % 4) + v).
#pragma unroll
  for (int i = 0; i < kHS / 8; ++i)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int b = b0 + 64 * cw + 16 * warp + (lane >> 2) + 8 * hh;
      const int f = h0 + 8 * i + 2 * (lane & 3);
      if (b >= B || f >= H) continue;
      const float v0 = acc[4 * i + 2 * hh], v1 = acc[4 * i + 2 * hh + 1];
      const int64_t o = int64_t(b) * H + f;
      if (part != nullptr) {
        const int64_t po = int64_t(blockIdx.y) * B * H + o;
        float* pp = part + po;
        if (f + 1 < H && (po & 1) == 0) {
          *reinterpret_cast<float2*>(pp) = make_float2(v0, v1);
        } else {
          pp[0] = v0;
          if (f + 1 < H) pp[1] = v1;
        }
      } else {
        dx[o] = from_float<T>(v0);
        if (f + 1 < H) dx[o + 1] = from_float<T>(v1);
      }
    }
}

// ================================================================== host side
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A 16-bit tensor map of `rank` dimensions (innermost first; strides in bytes for
// dimensions 1..rank-1), 128-byte swizzle unless told; reads outside the tensor return zeros and
// stores there are dropped.
cudaError_t tensor_map(CUtensorMap* map, DType dt, const void* p, int rank, const cuuint64_t* dims,
                       const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapL2promotion promotion,
                       CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  auto fn = encode_fn();
  if (fn == nullptr) return cudaErrorNotSupported;
  const cuuint32_t estr[3] = {1, 1, 1};
  const CUtensorMapDataType t =
      dt == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = fn(map, t, cuuint32_t(rank), const_cast<void*>(p), dims, strides, box, estr,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// W [L, K]: boxes of [G rows, 64 columns].
cudaError_t weight_map(CUtensorMap* map, DType dt, const void* w, int64_t L, int64_t K, int G) {
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(L)};
  const cuuint64_t strides[1] = {cuuint64_t(K) * 2};
  const cuuint32_t box[2] = {cuuint32_t(kKC), cuuint32_t(G)};
  return tensor_map(map, dt, w, 2, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// W [L, K] as [K / 64][L][64]: boxes of kNs fan-in chunks of `rows` rows (one unit).
cudaError_t unit_weight_map(CUtensorMap* map, DType dt, const void* w, int64_t L, int64_t K, int rows, int kNs) {
  const cuuint64_t dims[3] = {cuuint64_t(kKC), cuuint64_t(L), cuuint64_t(K / kKC)};
  const cuuint64_t strides[2] = {cuuint64_t(K) * 2, cuuint64_t(kKC) * 2};
  const cuuint32_t box[3] = {cuuint32_t(kKC), cuuint32_t(rows), cuuint32_t(kNs)};
  return tensor_map(map, dt, w, 3, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// The same boxes of an fp8 W [L, K] (1-byte codes: K bytes per row), unswizzled (the
// upcast, upcast_stages, places the bf16 values in the swizzled layout).
cudaError_t unit_weight_map_u8(CUtensorMap* map, const void* w, int64_t L, int64_t K, int rows, int kNs) {
  auto fn = encode_fn();
  if (fn == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[3] = {cuuint64_t(kKC), cuuint64_t(L), cuuint64_t(K / kKC)};
  const cuuint64_t strides[2] = {cuuint64_t(K), cuuint64_t(kKC)};
  const cuuint32_t box[3] = {cuuint32_t(kKC), cuuint32_t(rows), cuuint32_t(kNs)};
  const cuuint32_t estr[3] = {1, 1, 1};
  const CUresult r = fn(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(w), dims, strides, box, estr,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// y [rows, L] (L % 8 == 0): [64 rows, 64 labels] boxes, for stores.
cudaError_t output_map(CUtensorMap* map, DType dt, void* y, int64_t rows, int64_t L) {
  const cuuint64_t dims[2] = {cuuint64_t(L), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(L) * 2};
  const cuuint32_t box[2] = {64, 64};
  return tensor_map(map, dt, y, 2, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

// dY [B, L] with row stride s.dy_ld() (a multiple of 8): boxes of [rows, labels], 128-byte
// swizzle (64-byte for 32-label boxes). dx v2: [32, 64]; dW v2: [64, 32] for G = 32, else
// [64, 64] (the layouts of DwCfg::dy_chunk).
cudaError_t dy_map(CUtensorMap* map, DType dt, const void* dy, const GroupSparseShape& s, uint32_t rows,
                   uint32_t labels) {
  const cuuint64_t dims[2] = {cuuint64_t(s.out_features), cuuint64_t(s.batch)};
  const cuuint64_t strides[1] = {cuuint64_t(s.dy_ld()) * 2};
  const cuuint32_t box[2] = {labels, rows};
  return tensor_map(map, dt, dy, 2, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    labels == 32 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B);
}

// The row-class maps (DyMaps, kRc of dW and dx v2) of dY [B, L] with row stride s.dy_ld() (any):
// class c's rows c, c + 8, .. from row c's start rounded down to 16 bytes, L + shift columns
// (each row ends where dY's row ends; columns before shift are the previous row's tail, never
// used), boxes of [rows, labels + 8], no swizzle. A class with no row (c >= B) gets class 0's
// map: its boxes load class 0's rows, which the kernels zero as rows past B.
cudaError_t dy_class_maps(DyMaps* maps, DType dt, const void* dy, const GroupSparseShape& s, int labels, int rows) {
  const int64_t ld = s.dy_ld(), B = s.batch;
  maps->shifts = 0;
  for (int c = 0; c < 8; ++c) {
    const int64_t cc = c < B ? c : 0, start = cc * ld, shift = start & 7;
    maps->shifts |= uint32_t(shift) << (3 * c);
    const cuuint64_t dims[2] = {cuuint64_t(s.out_features + shift), cuuint64_t((B - cc + 7) / 8)};
    const cuuint64_t strides[1] = {cuuint64_t(ld) * 16};
    const cuuint32_t box[2] = {cuuint32_t(labels + 8), cuuint32_t(rows)};
    if (cudaError_t e = tensor_map(&maps->m[c], dt, static_cast<const uint16_t*>(dy) + (start - shift), 2, dims,
                                   strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_SWIZZLE_NONE);
        e != cudaSuccess)
      return e;
  }
  return cudaSuccess;
}

// Environment switches (timing comparisons, probes, opt-ins): whether `name` is set to
// `value`; its integer value (0 when unset).
bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::string(e) == value;
}
int env_int(const char* name) {
  const char* e = std::getenv(name);
  return e != nullptr ? std::atoi(e) : 0;
}

bool common_supported(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) {
  return dev.cc_major == 9 && dev.cc_minor == 0 && (dt == DType::kBFloat16 || dt == DType::kFloat16) &&
         s.fan_in % kKC == 0 && s.batch >= 1 && s.out_features < (int64_t(1) << 31) &&
         s.in_features < (int64_t(1) << 20);
}

template <class Fn>
cudaError_t dispatch(DType dt, int64_t G, Fn&& fn) {
  auto by_group = [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    switch (G) {
      case 16: return fn.template operator()<T, 16>();
      case 32: return fn.template operator()<T, 32>();
      case 64: return fn.template operator()<T, 64>();
      case 128: return fn.template operator()<T, 128>();
      default: return cudaErrorInvalidValue;
    }
  };
  if (dt == DType::kBFloat16) return by_group(TypeTag<__nv_bfloat16>{});
  if (dt == DType::kFloat16) return by_group(TypeTag<__half>{});
  return cudaErrorInvalidValue;
}

int64_t smem_budget(const DeviceInfo& dev) { return dev.smem_optin; }

// Calls fn.template operator()<kNk>() for K = 64, 128 or 256 (kNk = K / 64).
template <class Fn>
cudaError_t dispatch_k(int64_t K, Fn&& fn) {
  switch (K) {
    case 64: return fn.template operator()<1>();
    case 128: return fn.template operator()<2>();
    case 256: return fn.template operator()<4>();
  }
  return cudaErrorInvalidValue;
}

// Three stages per ring at G = 128 and H = 768 (the headline's H; 1.5x faster than two at
// K = 256, bench/NOTES.md session 27) fit the H100's and H200's 227 KB by 416 bytes: keep it so.
static_assert(FwdCfg<128, 4>::smem_bytes(768, 3, 2, true) <= 232448 && FwdCfg<128, 1>::smem_bytes(768, 3) <= 232448,
              "the forward at G = 128, H = 768 must keep three stages per ring");

// Stages per computing warpgroup's ring in the forward (at most 8), or 0 when fewer than
// two fit (a warpgroup holds up to two while the next is loaded).
template <int G, int kNk>
int fwd_stages(int64_t H, const DeviceInfo& dev, int cons, bool w8) {
  int spr = 8;
  if (const char* e = std::getenv("LARGEOUT_SM90_FWD_STAGES"); e != nullptr)  // timing probes only
    spr = std::clamp(std::atoi(e), 2, 16);
  while (spr >= 2 && FwdCfg<G, kNk>::smem_bytes(H, spr, cons, w8) > smem_budget(dev)) --spr;
  return spr >= 2 ? spr : 0;
}

// Computing warpgroups of the forward: three where their rings fit and G <= 64 (one more
// warpgroup issuing gathers and MMAs: 1.1-1.4x faster at G = 16, 32 and 64 on an H200,
// bench/NOTES.md "Hopper forward v7"), else two. LARGEOUT_SM90_FWD_CONS=2|3 forces two or
// three (three only for G <= 64 and where it fits; timing comparisons and tests).
// *spr: stages per ring (0: no fit).
template <int G, int kNk>
int fwd_cons(int64_t H, const DeviceInfo& dev, int* spr, bool w8 = false) {
  if (G <= 64 && !env_is("LARGEOUT_SM90_FWD_CONS", "2")) {
    *spr = fwd_stages<G, kNk>(H, dev, 3, w8);
    if (*spr > 0) return 3;
  }
  *spr = fwd_stages<G, kNk>(H, dev, 2, w8);
  return 2;
}

// dW's ring holds at most 16 stages at K = 64 and 8 at larger K (the defaults, measured), or
// LARGEOUT_SM90_DW_STAGES of them (4-16; a tuning knob), as many as shared memory takes. More
// stages put more gathers in flight: 11 measured within 1.5% of 8 at K = 128 on an H100
// (bench/NOTES.md session 19), 16 against 8 at L = 131,072 on an H200 faster at K = 64 only
// (B = 1024: 1.07-1.10x; knob_dw_stages_s42_h200.json; at K = 256 no more than 6 fit). At
// K = 64 over B 128-1024, G 32-128 and L 131,072 / 670,091 / 2,812,281 on an H100, 8 stages
// took 0.98-1.27x the time of 16 (knob_dw_k64_stages_L*_s43_h100.json).
template <int kNmb>
int dw_max_stages() {
  const int e = env_int("LARGEOUT_SM90_DW_STAGES");
  return e >= 4 ? std::min(e, 16) : kNmb == 1 ? 16 : kMaxStages;
}

template <int G, int kNmb>
int dw_stages(const DeviceInfo& dev, bool tma = false, bool split_b = false, bool dbc = false, bool rc = false) {
  int st = dw_max_stages<kNmb>();
  while (st >= 2 && DwCfg<G, kNmb>::smem_bytes(st, tma, split_b, dbc, rc) > smem_budget(dev)) --st;
  if (split_b) st = st >= 4 ? st & ~1 : 0;  // even, and at least 4 (the loader runs stages - 3 ahead)
  return st;
}

// Whether K = 64's batch chunks are split between the computing warpgroups (split_b): where the
// ring cannot hold two groups' chunks.
template <int G, int kNmb>
bool dw_split_b(const DeviceInfo& dev, int64_t batch, bool tma, bool rc) {
  return kNmb == 1 && 2 * cdiv(batch, 64) > dw_stages<G, kNmb>(dev, tma, false, false, rc);
}

// dW's ring for one launch (dbc: dbias's partials from the computing warpgroups, [256][8] fp32,
// else from the loader, [128][8]).
template <int G, int kNmb>
int dw_ring(const DeviceInfo& dev, int64_t batch, bool tma, bool split_b, bool dbc, bool rc) {
  int st = dw_stages<G, kNmb>(dev, tma, split_b, dbc, rc);
  // K = 64 without split_b (the computing warpgroups take alternate groups of nbc steps) and dY
  // by TMA: a stage's `full` barrier completes when its copies land, in any order, so a
  // warpgroup waiting for step X needs step X - stages of the same slot complete; that is sure
  // only for its own steps, i.e. when the ring is a multiple of two groups' steps (2 nbc <=
  // stages here without dbc; with at least 4 stages the result is at least 4). v1's loader
  // completes `full` in step order.
  if (kNmb == 1 && !split_b && tma) st -= st % (2 * int(cdiv(batch, 64)));
  return st;
}

template <int G>
void dx_stages(int64_t H, const DeviceInfo& dev, int* ws, int* ds) {
  // Enough dY tiles in flight to cover DRAM latency (their rows are L apart).
  *ws = kMaxStages;
  *ds = G == 32 ? 12 : G == 64 ? 8 : 4;
  while (*ws >= 2 && DxCfg<G>::smem_bytes(H, *ws, *ds) > smem_budget(dev)) {
    if (*ds > 2 && (*ds > 4 || *ws <= 4)) --*ds;
    else --*ws;
  }
}

}  // namespace

// ------------------------------------------------------------------ forward
namespace {
bool fwd_fits(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, bool w8) {
  if (!common_supported(dt, s, dev) || s.in_features % 8 != 0) return false;
  int st = 0;
  dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    return dispatch_k(s.fan_in, [&]<int kNk>() -> cudaError_t {
      fwd_cons<G, kNk>(s.in_features, dev, &st, w8);
      return cudaSuccess;
    });
  });
  return st > 0;
}

// Output by TMA where its rows are 16-byte aligned (LARGEOUT_SM90_FWD_TMA_STORE=0: plain
// stores). Elsewhere plain stores: staging rows shifted so that bulk copies store their
// aligned middles measured no faster (bench/results/fwd_bulk_h200.json).
bool fwd_tma_store(const GroupSparseShape& s, const void* y) {
  return s.out_features % 8 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
         !env_is("LARGEOUT_SM90_FWD_TMA_STORE", "0");
}

// The forward's launch with the kernel for G-label groups. idx_shift 0: the layer's groups;
// 1 (G = 64): a layer of 128-label groups run as two 64-label groups per index row.
// kW8 false: the weight has the type of x; true: fp8 codes (T = bf16), e4m3fn where e4m3,
// else e5m2, times row_scale[l] where row_scale is not null.
template <class T, int G, int kNk, bool kW8>
cudaError_t fwd_launch_g(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, const void* x, const void* weight,
                         const float* row_scale, bool e4m3, const int32_t* indices, const void* bias, void* y,
                         cudaStream_t stream, int idx_shift) {
  using C = FwdCfg<G, kNk>;
  int spr = 0;
  const int cons = fwd_cons<G, kNk>(s.in_features, dev, &spr, kW8);
  if (spr == 0) return cudaErrorInvalidValue;
  auto kernel = gsl_fwd_sm90<T, G, kNk, 0, 2, kW8>;
  if constexpr (G <= 64) {
    if (cons == 3) kernel = gsl_fwd_sm90<T, G, kNk, 0, 3, kW8>;
  }
  if constexpr (!kW8 && std::is_same_v<T, __nv_bfloat16> && G == 32 && kNk == 2) {
    // Timing probes (bench/probe_fwd.py): LARGEOUT_SM90_FWD_PROBE (1-4).
    const int pv = env_int("LARGEOUT_SM90_FWD_PROBE");
    auto probe_kernel = [&]<int kC>() {
      return pv == 1 ? gsl_fwd_sm90<T, G, kNk, 1, kC> : pv == 2 ? gsl_fwd_sm90<T, G, kNk, 2, kC>
           : pv == 3 ? gsl_fwd_sm90<T, G, kNk, 3, kC> : gsl_fwd_sm90<T, G, kNk, 4, kC>;
    };
    if (pv >= 1 && pv <= 4)
      kernel = cons == 3 ? probe_kernel.template operator()<3>() : probe_kernel.template operator()<2>();
  }
  CUtensorMap map;
  if (cudaError_t e = kW8 ? unit_weight_map_u8(&map, weight, s.out_features, s.fan_in, C::kRows, C::kNs)
                          : unit_weight_map(&map, dt, weight, s.out_features, s.fan_in, C::kRows, C::kNs);
      e != cudaSuccess)
    return e;
  const int64_t smem = C::smem_bytes(s.in_features, spr, cons, kW8);
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      e != cudaSuccess)
    return e;
  const int64_t ng = cdiv(s.out_features, G);  // (s.num_groups() << idx_shift, or one less)
  const int64_t tiles = cdiv(s.batch, C::kBM);
  const int64_t splits = std::clamp<int64_t>(dev.sms / std::min<int64_t>(tiles, dev.sms), 1, ng);
  const int64_t per = cdiv(cdiv(ng, splits), C::kU) * C::kU;  // whole units per split
  // L1 prefetch of each warpgroup's next unit's bias at G = 32 and at G = 64 with B >= 512:
  // 0.81-1.00x the time there at K <= 128 and B >= 256 on an H100 (G = 32, B = 128:
  // 0.96-1.03x), 0.95-1.05x at K = 256; at G = 128 with K = 64
  // and at G = 64 with B <= 256 and L = 670,208 it measured 3-17% slower (two runs of
  // bench/bench_knob.py, bench/results/knob_fwd_bias_prefetch_*_s28_h100.json).
  // LARGEOUT_SM90_FWD_BIAS_PREFETCH=0 / 1: never / always (timing comparisons).
  const bool prefetch_bias = env_is("LARGEOUT_SM90_FWD_BIAS_PREFETCH", "1") ||
                             (!env_is("LARGEOUT_SM90_FWD_BIAS_PREFETCH", "0") &&
                              (G == 32 || (G == 64 && s.batch >= 512)));
  // The bias read as label pairs (4-byte loads) where it is 4-byte aligned.
  // LARGEOUT_SM90_FWD_BIAS_PAIRS=0: 2-byte loads (timing comparisons).
  const bool bias_pairs =
      reinterpret_cast<uintptr_t>(bias) % 4 == 0 && !env_is("LARGEOUT_SM90_FWD_BIAS_PAIRS", "0");
  const bool tma_store = fwd_tma_store(s, y);
  constexpr int64_t kMaxTiles = 65535;
  for (int64_t t0 = 0; t0 < tiles; t0 += kMaxTiles) {
    const int64_t nt = std::min(kMaxTiles, tiles - t0);
    const int64_t r0 = t0 * C::kBM;
    const int rows = int(std::min<int64_t>(s.batch - r0, nt * C::kBM));
    T* yc = static_cast<T*>(y) + r0 * s.out_features;
    CUtensorMap ymap{};
    if (tma_store)
      if (cudaError_t e = output_map(&ymap, dt, yc, rows, s.out_features); e != cudaSuccess) return e;
    kernel<<<dim3(unsigned(cdiv(ng, per)), unsigned(nt)), unsigned(128 * (cons + 1)), smem, stream>>>(
        map, ymap, static_cast<const T*>(x) + r0 * s.in_features, indices, static_cast<const T*>(bias), yc,
        rows, int(s.in_features), s.out_features, int(per), int(ng), spr, int(tma_store), row_scale,
        int(e4m3), 0x3210u, int(prefetch_bias), idx_shift, int(bias_pairs));
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

std::atomic<int64_t> g_fwd_g128_as_64{0};  // launches (fwd_g128_as_64_launches)

// G = 128 run as pairs of 64-label groups (the G = 64 kernel: three computing warpgroups
// where their rings fit, else two as at G = 128; 64-label units; the same indices read for
// both halves of a group), for 16-bit weights where the G = 64 kernel's rings fit. The
// default at K = 256 and B >= 256 with TMA stores, where the G = 64 kernel runs three
// computing warpgroups (as measured: H = 768): 0.80-0.90x the time of G = 128's kernel there
// at B 256-1024 and L 131,072-2,812,288 (multiples of 8) on an H100. Not at B = 128
// (0.94-1.11x), K = 128 (0.98-1.07x), K = 64 (1.00-1.08x), nor with plain stores (odd L:
// 0.97-1.21x), session 30's bench/bench_knob.py runs (bench/results/knob_g128_as_64*_s30_h100.json).
// LARGEOUT_SM90_FWD_G128_AS_64=0 / 1: never / always (where the rings fit).
template <int kNk>
bool fwd_g128_as_64(const GroupSparseShape& s, const DeviceInfo& dev, const void* y) {
  if (env_is("LARGEOUT_SM90_FWD_G128_AS_64", "0")) return false;
  const bool forced = env_is("LARGEOUT_SM90_FWD_G128_AS_64", "1");
  if (!forced && !(kNk == 4 && s.batch >= 256 && fwd_tma_store(s, y))) return false;
  int spr = 0;
  const int cons = fwd_cons<64, kNk>(s.in_features, dev, &spr, false);
  return spr > 0 && (forced || cons == 3);
}

template <bool kW8>
cudaError_t fwd_launch(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, const void* x, const void* weight,
                       const float* row_scale, bool e4m3, const int32_t* indices, const void* bias, void* y,
                       cudaStream_t stream) {
  return dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (kW8 && !std::is_same_v<T, __nv_bfloat16>) {
      return cudaErrorInvalidValue;
    } else {
      return dispatch_k(s.fan_in, [&]<int kNk>() -> cudaError_t {
        if constexpr (G == 128 && !kW8) {
          if (fwd_g128_as_64<kNk>(s, dev, y)) {
            g_fwd_g128_as_64.fetch_add(1);
            return fwd_launch_g<T, 64, kNk, kW8>(dt, s, dev, x, weight, row_scale, e4m3, indices, bias, y, stream, 1);
          }
        }
        return fwd_launch_g<T, G, kNk, kW8>(dt, s, dev, x, weight, row_scale, e4m3, indices, bias, y, stream, 0);
      });
    }
  });
}
}  // namespace

bool fwd_supported(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) { return fwd_fits(dt, s, dev, false); }

int64_t fwd_g128_as_64_launches() { return g_fwd_g128_as_64.load(); }

cudaError_t fwd(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, const void* x, const void* weight,
                const int32_t* indices, const void* bias, void* y, cudaStream_t stream) {
  return fwd_launch<false>(dt, s, dev, x, weight, nullptr, false, indices, bias, y, stream);
}

bool fwd_fp8_supported(const GroupSparseShape& s, const DeviceInfo& dev) {
  return fwd_fits(DType::kBFloat16, s, dev, true);
}

cudaError_t fwd_fp8(bool e4m3, const GroupSparseShape& s, const DeviceInfo& dev, const void* x, const void* weight,
                    const float* row_scale, const int32_t* indices, const void* bias, void* y, cudaStream_t stream) {
  return fwd_launch<true>(DType::kBFloat16, s, dev, x, weight, row_scale, e4m3, indices, bias, y, stream);
}

// ------------------------------------------------------------------ dW
namespace {
// K = 64 with B / 64 stages per group beyond half the ring: both warpgroups on every group
// (measured 1.3-4.5x faster than the generic kernels there, bench/results/dw_splitb_h200.json;
// LARGEOUT_SM90_DW_SPLITB=0 leaves those shapes to the generic kernels).
bool dw_split_batch() { return !env_is("LARGEOUT_SM90_DW_SPLITB", "0"); }
// Loader warpgroups of dW v2: LARGEOUT_SM90_DW_LOADERS=2 or 4 asks for two or four (opt-in: both
// measured slower than one at the headline, dwload_*_s23_h100.json; where they do not fit, fewer:
// see dw()), else one.
int dw_loaders() {
  const int n = env_int("LARGEOUT_SM90_DW_LOADERS");
  return n == 2 || n == 4 ? n : 1;
}

bool dw_v2_applies(const GroupSparseShape& s) { return s.dy_ld() % 8 == 0 && !env_is("LARGEOUT_SM90_DW", "v1"); }
// v2 through row classes (kRc) where dY's row stride is not a multiple of 8, unless
// LARGEOUT_SM90_DW=v1 or LARGEOUT_SM90_DW_RC=0 (the default since session 39: 1.6-3.0x faster than v1
// at L = 670,091, knob_dw_rc_s39_h100.json); it needs dbias by the computing warpgroups (dbc),
// else v1 runs.
bool dw_rc_applies(const GroupSparseShape& s) {
  return s.dy_ld() % 8 != 0 && !env_is("LARGEOUT_SM90_DW", "v1") && !env_is("LARGEOUT_SM90_DW_RC", "0");
}
std::atomic<int64_t> g_dw_rc{0};  // launches (dw_row_class_launches)
}  // namespace

int64_t dw_row_class_launches() { return g_dw_rc.load(); }

namespace {
// Whether dw() runs the row-class kernel for this shape (dbias by the computing warpgroups, with a
// ring of at least 3 stages; else v1).
bool dw_rc_fits(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) {
  if (!dw_rc_applies(s) || env_is("LARGEOUT_SM90_DW_DBIAS", "loader")) return false;
  bool fits = false;
  dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G >= 32) {
      return dispatch_k(s.fan_in, [&]<int kNmb>() -> cudaError_t {
        const bool split_b = dw_split_b<G, kNmb>(dev, s.batch, true, true);
        fits = (!split_b || dw_split_batch()) && dw_ring<G, kNmb>(dev, s.batch, true, split_b, true, true) >= 3;
        return cudaSuccess;
      });
    }
    return cudaSuccess;
  });
  return fits;
}
}  // namespace

bool dw_tma_supported(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) {
  return dw_supported(dt, s, dev) && (dw_v2_applies(s) || dw_rc_fits(dt, s, dev));
}

bool dw_supported(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) {
  if (!common_supported(dt, s, dev) || s.group_size < 32 || s.batch > (int64_t(1) << 30)) return false;
  int st = 0;
  dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G >= 32) {
      return dispatch_k(s.fan_in, [&]<int kNmb>() -> cudaError_t {
        st = dw_stages<G, kNmb>(dev);
        // K = 64: the computing warpgroups take alternate groups of B / 64 stages each, so
        // one can wait a whole group ahead of the loader; the ring must hold two groups,
        // or that wait tests a barrier phase whose parity matches a completed one. Where it
        // does not, split_b has both work on every group.
        if (kNmb == 1 && 2 * cdiv(s.batch, 64) > st) st = dw_split_batch() ? dw_stages<G, kNmb>(dev, false, true) : 0;
        return cudaSuccess;
      });
    }
    return cudaSuccess;
  });
  return st >= 3;
}

int64_t dw_workspace_bytes(DType, const GroupSparseShape& s) {
  return s.in_features * cdiv(s.batch, 64) * 64 * 2;
}

cudaError_t dw(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, const void* dy, const void* x,
               const int32_t* indices, void* dweight, void* dbias, void* workspace, cudaStream_t stream) {
  return dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G < 32) {
      return cudaErrorInvalidValue;
    } else {
      return dispatch_k(s.fan_in, [&]<int kNmb>() -> cudaError_t {
        using C = DwCfg<G, kNmb>;
        // v2 (dY by TMA) where dY rows are 16-byte aligned, unless LARGEOUT_SM90_DW=v1; else v2
        // through row classes (rc) where it applies (below); else v1, which reads dY as
        // contiguous [B, L].
        const bool aligned_dy = reinterpret_cast<uintptr_t>(dy) % 16 == 0;
        bool rc = aligned_dy && dw_rc_applies(s);
        bool tma = (dw_v2_applies(s) && aligned_dy) || rc;
        const bool split_b = dw_split_b<G, kNmb>(dev, s.batch, tma, rc);
        if (split_b && !dw_split_batch()) return cudaErrorInvalidValue;
        // More loader warpgroups (LARGEOUT_SM90_DW_LOADERS): 2 except at G = 128, K = 256 (its
        // two 64-wide accumulators spill at 128 registers a thread), 4 at G = 32 only (768
        // threads: 80 registers a thread); elsewhere the request falls back to fewer.
        constexpr bool kTwoFit = !(G == 128 && kNmb == 4), kFourFit = G == 32;
        int loaders = tma && !rc ? dw_loaders() : 1;
        if (loaders == 4 && !kFourFit) loaders = 2;
        if (loaders == 2 && !kTwoFit) loaders = 1;
        auto ring = [&](bool dbc) { return dw_ring<G, kNmb>(dev, s.batch, tma, split_b, dbc, rc); };
        // dbias by the computing warpgroups (kDbC) with one loader warpgroup, where its ring holds
        // at least 3 stages: the default at every K (LARGEOUT_SM90_DW_DBIAS=loader keeps it in the
        // loader; at K = 64 2x faster at B = 128 and 512 on the H200, dbc_*_s24_h200.json, the
        // default since session 25's run of the split-batch fix, bench/NOTES.md); dY by the
        // loader's cp.async instead of TMA boxes (LARGEOUT_SM90_DW_DY=cp, opt-in: measured slower)
        const bool dycp = tma && !rc && loaders == 1 && env_is("LARGEOUT_SM90_DW_DY", "cp");
        const bool dbc = tma && loaders == 1 && !env_is("LARGEOUT_SM90_DW_DBIAS", "loader") && ring(true) >= 3;
        if (rc && !dbc) rc = tma = false;  // (rc needs dbc: v1 then, with v1's ring, the same size)
        if (!tma && s.dy_ld() != s.out_features) return cudaErrorInvalidValue;
        const int stages = ring(dbc);
        if (stages < 3) return cudaErrorInvalidValue;
        const int B = int(s.batch), H = int(s.in_features);
        const int Bp = int(cdiv(B, 64) * 64);
        T* xt = static_cast<T*>(workspace);
        transpose_pad<T><<<dim3(unsigned(cdiv(Bp, 32)), unsigned(cdiv(H, 32))), dim3(32, 8), 0, stream>>>(
            static_cast<const T*>(x), xt, B, H, Bp);
        if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
        DyMaps dmap{};
        if (rc) {
          if (cudaError_t e = dy_class_maps(&dmap, dt, dy, s, G, 8); e != cudaSuccess) return e;
        } else if (tma) {
          if (cudaError_t e = dy_map(&dmap.m[0], dt, dy, s, 64, G == 32 ? 32 : 64); e != cudaSuccess) return e;
        }
        const int64_t ng = s.num_groups();
        const int64_t per = cdiv(ng, std::min<int64_t>(ng, dev.sms));
        auto kernel = tma ? gsl_dw_sm90<T, G, kNmb, 0, true> : gsl_dw_sm90<T, G, kNmb>;
        if constexpr (kTwoFit)
          if (loaders == 2) kernel = gsl_dw_sm90<T, G, kNmb, 0, true, 2>;
        if constexpr (kFourFit)
          if (loaders == 4) kernel = gsl_dw_sm90<T, G, kNmb, 0, true, 4>;
        if (dycp) kernel = gsl_dw_sm90<T, G, kNmb, 0, true, 1, true>;
        if (dbc) kernel = gsl_dw_sm90<T, G, kNmb, 0, true, 1, false, true>;
        if (rc) kernel = gsl_dw_sm90<T, G, kNmb, 0, true, 1, false, true, true>;
        // (both at G = 128, K = 256 spill at its 168 registers a thread: dbias by the computing
        // warpgroups alone there)
        if constexpr (!(G == 128 && kNmb == 4))
          if (dbc && dycp) kernel = gsl_dw_sm90<T, G, kNmb, 0, true, 1, true, true>;
        const int64_t smem = C::smem_bytes(stages, tma, split_b, dbc, rc);
        if (smem > smem_budget(dev)) return cudaErrorInvalidValue;
        if constexpr (std::is_same_v<T, __nv_bfloat16> && G == 32 && kNmb == 2) {
          // Timing probes (bench/probe_fwd.py --passes dw): LARGEOUT_SM90_DW_PROBE, 1-3 on v1,
          // 1-6 on v2 (one loader warpgroup), 7-10 on the row classes (--dw-rc).
          const int pv = env_int("LARGEOUT_SM90_DW_PROBE");
          if (rc) {
            if (pv == 7) kernel = gsl_dw_sm90<T, G, kNmb, 7, true, 1, false, true, true>;
            if (pv == 8) kernel = gsl_dw_sm90<T, G, kNmb, 8, true, 1, false, true, true>;
            if (pv == 9) kernel = gsl_dw_sm90<T, G, kNmb, 9, true, 1, false, true, true>;
            if (pv == 10) kernel = gsl_dw_sm90<T, G, kNmb, 10, true, 1, false, true, true>;
          } else if (!tma) {
            if (pv == 1) kernel = gsl_dw_sm90<T, G, kNmb, 1>;
            if (pv == 2) kernel = gsl_dw_sm90<T, G, kNmb, 2>;
            if (pv == 3) kernel = gsl_dw_sm90<T, G, kNmb, 3>;
          } else if (loaders == 1 && !rc) {
            if (pv == 1) kernel = gsl_dw_sm90<T, G, kNmb, 1, true>;
            if (pv == 2) kernel = gsl_dw_sm90<T, G, kNmb, 2, true>;
            if (pv == 3) kernel = gsl_dw_sm90<T, G, kNmb, 3, true>;
            if (pv == 4) kernel = gsl_dw_sm90<T, G, kNmb, 4, true>;
            if (pv == 5) kernel = gsl_dw_sm90<T, G, kNmb, 5, true>;
            if (pv == 6) kernel = gsl_dw_sm90<T, G, kNmb, 6, true>;
          }
        }
        if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
            e != cudaSuccess)
          return e;
        kernel<<<unsigned(cdiv(ng, per)), unsigned(128 * (loaders + 2)), smem, stream>>>(
            dmap, xt, static_cast<const T*>(dy), indices, static_cast<T*>(dweight), static_cast<T*>(dbias), B, Bp,
            s.out_features, s.dy_ld(), int(per), int(ng), stages, int(split_b));
        if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
        if (rc) g_dw_rc.fetch_add(1);
        return cudaSuccess;
      });
    }
  });
}

// ------------------------------------------------------------------ dx
bool dx_supported(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) {
  if (!common_supported(dt, s, dev) || s.group_size < 32 || s.batch > int64_t(65535) * 32) return false;
  int ws = 0, ds = 0;
  dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G >= 32) dx_stages<G>(s.in_features, dev, &ws, &ds);
    return cudaSuccess;
  });
  // The weight ring holds a whole group's K / 64 chunks (the warpgroups meet once per group).
  return ws >= 2 && ws >= s.fan_in / kKC && ds >= 2;
}

namespace {
// dx v3 (expanded weights) where dY's row stride is a multiple of 8 (TMA): the default for
// G <= 64 and K >= 128 (measured faster than v2 there: bench/results/dx3_slices_h200.json);
// LARGEOUT_SM90_DX=v3 takes it for every shape it covers, v2 or v1 keep it off.
bool dx_v3_applies(const GroupSparseShape& s, const DeviceInfo& dev) {
  const bool forced = env_is("LARGEOUT_SM90_DX", "v3");
  if (!forced && (env_is("LARGEOUT_SM90_DX", "v2") || env_is("LARGEOUT_SM90_DX", "v1") || s.group_size > 64 ||
                  s.fan_in < 128))
    return false;
  if (s.dy_ld() % 8 != 0 || s.group_size < 32) return false;
  bool fits = false;  // (stays false for K other than 64, 128, 256)
  dispatch_k(s.fan_in, [&]<int kNk>() -> cudaError_t {
    fits = Dx3Cfg<kNk>::smem_bytes() <= smem_budget(dev);
    return cudaSuccess;
  });
  return fits;
}
// Unit ranges of dx v3: enough CTAs (tiles x splits) for one wave.
int64_t dx3_splits(const GroupSparseShape& s, const DeviceInfo& dev) {
  const int64_t tiles = cdiv(s.batch, Dx3Cfg<1>::kBM) * cdiv(s.in_features, Dx3Cfg<1>::kHS);
  const int64_t units = cdiv(s.out_features, Dx3Cfg<1>::kUnit);
  const int64_t sp = std::clamp<int64_t>(dev.sms / tiles, 1, std::min<int64_t>(std::max<int64_t>(units, 1), 65535));
  return cdiv(units, cdiv(units, sp));
}
}  // namespace

void dx_layout(const GroupSparseShape& s, const DeviceInfo& dev, int64_t* splits, int64_t* workspace_bytes) {
  if (dx_v3_applies(s, dev)) {
    *splits = dx3_splits(s, dev);
    *workspace_bytes = *splits > 1 ? *splits * s.batch * s.in_features * 4 : 0;
    return;
  }
  const int64_t tiles = cdiv(s.batch, 32);
  const int64_t ng = s.num_groups();
  int64_t sp = std::clamp<int64_t>(dev.sms / std::min<int64_t>(tiles, dev.sms), 1, ng);
  const int64_t per = cdiv(ng, sp);
  sp = cdiv(ng, per);
  *splits = sp;
  *workspace_bytes = sp > 1 ? sp * s.batch * s.in_features * 4 : 0;
}

namespace {
// Weight and dY stages of dx v2 (false: two of each do not fit).
template <int G, int kNk>
bool dx2_stages(int64_t H, const DeviceInfo& dev, int* wst, int* dst, bool w8 = false, bool rc = false) {
  using C = Dx2Cfg<G, kNk>;
  *wst = 4, *dst = 4;
  while (*wst > 2 && C::smem_bytes(H, *wst, *dst, w8, rc) > smem_budget(dev)) --*wst, --*dst;
  return C::smem_bytes(H, *wst, *dst, w8, rc) <= smem_budget(dev);
}

// The shapes dx v2 takes whatever dY's row stride (unless LARGEOUT_SM90_DX=v1).
bool dx_v2_covers(const GroupSparseShape& s) {
  return !env_is("LARGEOUT_SM90_DX", "v1") && (s.fan_in == 64 || s.fan_in == 128 || s.fan_in == 256) &&
         cdiv(s.batch, 32) <= 65535;
}
bool dx_v2_applies(const GroupSparseShape& s) { return dx_v2_covers(s) && s.dy_ld() % 8 == 0; }
// dx v2 through row classes (16-bit weights) where dY's row stride is not a multiple of 8, unless
// LARGEOUT_SM90_DX_RC=0 (the default since session 39: 1.3-2.9x faster than v1 at L = 670,091,
// knob_dx_rc_s39_h100.json).
bool dx_v2_rc_applies(const GroupSparseShape& s) {
  return dx_v2_covers(s) && s.dy_ld() % 8 != 0 && !env_is("LARGEOUT_SM90_DX_RC", "0");
}
std::atomic<int64_t> g_dx_rc{0};  // launches (dx_row_class_launches)

}  // namespace

int64_t dx_row_class_launches() { return g_dx_rc.load(); }

namespace {
// Whether dx v2 applies to this shape and its stages fit (w8: with fp8 weights; rc: through row
// classes, for a dY row stride that is not a multiple of 8).
bool dx2_fits(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, bool w8, bool rc = false) {
  if (!dx_supported(dt, s, dev) || !(rc ? !w8 && dx_v2_rc_applies(s) : dx_v2_applies(s))) return false;
  bool fits = false;
  dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G >= 32) {
      return dispatch_k(s.fan_in, [&]<int kNk>() -> cudaError_t {
        int w = 0, d = 0;
        fits = dx2_stages<G, kNk>(s.in_features, dev, &w, &d, w8, rc);
        return cudaSuccess;
      });
    }
    return cudaSuccess;
  });
  return fits;
}
}  // namespace

bool dx_tma_supported(DType dt, const GroupSparseShape& s, const DeviceInfo& dev) {
  // (dx v3, where it applies, runs before v2 on aligned rows; dx_fp8_supported says the same)
  if (s.dy_ld() % 8 == 0 && dx_supported(dt, s, dev) && dx_v3_applies(s, dev)) return true;
  return dx2_fits(dt, s, dev, false, s.dy_ld() % 8 != 0);
}

namespace {
// dx v2 where dY rows are 16-byte aligned and K is 64, 128 or 256 (unless
// LARGEOUT_SM90_DX=v1); cudaErrorNotSupported where it does not apply (the caller then runs v1).
// kW8: fp8 weights (T = bf16; e4m3fn where e4m3, else e5m2; times row_scale[l] where not null).
template <class T, int G, bool kW8 = false>
cudaError_t dx_v2(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, int64_t splits, const void* dy,
                  const void* weight, const int32_t* indices, void* dxp, void* workspace, cudaStream_t stream,
                  const float* row_scale = nullptr, bool e4m3 = false) {
  const bool rc = !kW8 && dx_v2_rc_applies(s);  // (else v2 needs dY rows a multiple of 8 apart)
  if (!(rc || dx_v2_applies(s)) || reinterpret_cast<uintptr_t>(dy) % 16 != 0) return cudaErrorNotSupported;
  return dispatch_k(s.fan_in, [&]<int kNk>() -> cudaError_t {
    using C = Dx2Cfg<G, kNk>;
    int wst = 0, dst = 0;
    if (!dx2_stages<G, kNk>(s.in_features, dev, &wst, &dst, kW8, rc)) return cudaErrorNotSupported;
    CUtensorMap wmap;
    DyMaps dmap{};
    if (cudaError_t e = kW8 ? unit_weight_map_u8(&wmap, weight, s.out_features, s.fan_in, C::kRows, C::kNs)
                            : unit_weight_map(&wmap, dt, weight, s.out_features, s.fan_in, C::kRows, C::kNs);
        e != cudaSuccess)
      return e;
    if (cudaError_t e = rc ? dy_class_maps(&dmap, dt, dy, s, C::kRows, 4) : dy_map(&dmap.m[0], dt, dy, s, 32, 64);
        e != cudaSuccess)
      return e;
    auto kernel = gsl_dx2_sm90<T, G, kNk, 0, kW8>;
    if constexpr (!kW8)
      if (rc) kernel = gsl_dx2_sm90<T, G, kNk, 0, false, true>;
    if constexpr (!kW8 && std::is_same_v<T, __nv_bfloat16> && G == 32 && kNk == 2) {
      // Timing probes (bench/probe_fwd.py --passes dx): LARGEOUT_SM90_DX_PROBE (1-3).
      const int pv = rc ? 0 : env_int("LARGEOUT_SM90_DX_PROBE");  // (no probes of the row-class kernel)
      if (pv == 1) kernel = gsl_dx2_sm90<T, G, kNk, 1>;
      if (pv == 2) kernel = gsl_dx2_sm90<T, G, kNk, 2>;
      if (pv == 3) kernel = gsl_dx2_sm90<T, G, kNk, 3>;
    }
    const int64_t smem = C::smem_bytes(s.in_features, wst, dst, kW8, rc);
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        e != cudaSuccess)
      return e;
    const int64_t ng = s.num_groups();
    // Whole units per split; every one of the `splits` CTAs writes its partial (zeros
    // for an empty range), so the reduction below sees `splits` partials.
    const int64_t per = cdiv(cdiv(ng, splits), C::kU) * C::kU;
    float* part = splits > 1 ? static_cast<float*>(workspace) : nullptr;
    kernel<<<dim3(unsigned(splits), unsigned(cdiv(s.batch, 32))), kThreads, smem, stream>>>(
        wmap, dmap, indices, part, static_cast<T*>(dxp), int(s.batch), int(s.in_features), s.out_features, int(per),
        int(ng), wst, dst, row_scale, int(e4m3));
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    if (rc) g_dx_rc.fetch_add(1);
    if (part == nullptr) return cudaSuccess;
    return launch_dx_reduce<float, T>(part, static_cast<T*>(dxp), splits, s.batch * s.in_features, stream);
  });
}
}  // namespace

namespace {
// kW8: fp8 weights (T = bf16; e4m3fn where e4m3, else e5m2; times row_scale[l] where not null).
template <class T, int G, bool kW8 = false>
cudaError_t dx_v3(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, int64_t splits, const void* dy,
                  const void* weight, const int32_t* indices, void* dxp, void* workspace, cudaStream_t stream,
                  const float* row_scale = nullptr, bool e4m3 = false) {
  return dispatch_k(s.fan_in, [&]<int kNk>() -> cudaError_t {
    using C = Dx3Cfg<kNk>;
    CUtensorMap dmap;
    if (cudaError_t e = dy_map(&dmap, dt, dy, s, C::kBM, C::kUnit); e != cudaSuccess) return e;
    auto kernel = gsl_dx3_sm90<T, G, kNk, 0, kW8>;
    if constexpr (!kW8 && std::is_same_v<T, __nv_bfloat16>) {
      // Timing probes: LARGEOUT_SM90_DX3_PROBE (1: no scatter, 2: no MMAs, 3: the previous thread mapping).
      const int pv = env_int("LARGEOUT_SM90_DX3_PROBE");
      if (pv == 1) kernel = gsl_dx3_sm90<T, G, kNk, 1>;
      if (pv == 2) kernel = gsl_dx3_sm90<T, G, kNk, 2>;
      if (pv == 3) kernel = gsl_dx3_sm90<T, G, kNk, 3>;
    }
    const int64_t smem = C::smem_bytes();
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        e != cudaSuccess)
      return e;
    const int64_t units = cdiv(s.out_features, C::kUnit);
    const int64_t per = std::max<int64_t>(1, cdiv(units, splits));
    const int64_t tiles = cdiv(s.batch, C::kBM) * cdiv(s.in_features, C::kHS);
    if (tiles > INT32_MAX || splits > 65535) return cudaErrorInvalidValue;
    float* part = splits > 1 ? static_cast<float*>(workspace) : nullptr;
    kernel<<<dim3(unsigned(tiles), unsigned(splits)), kThreads, smem, stream>>>(
        dmap, weight, indices, part, static_cast<T*>(dxp), int(s.batch), int(s.in_features), s.out_features, int(per),
        int(s.num_groups()), row_scale, int(e4m3));
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    if (part == nullptr) return cudaSuccess;
    return launch_dx_reduce<float, T>(part, static_cast<T*>(dxp), splits, s.batch * s.in_features, stream);
  });
}
}  // namespace

cudaError_t dx(DType dt, const GroupSparseShape& s, const DeviceInfo& dev, int64_t splits, const void* dy,
               const void* weight, const int32_t* indices, void* dxp, void* workspace, cudaStream_t stream) {
  return dispatch(dt, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G < 32) {
      return cudaErrorInvalidValue;
    } else {
      // (group_sparse_dx has checked dY's 16-byte alignment that TMA needs)
      if (dx_v3_applies(s, dev)) return dx_v3<T, G>(dt, s, dev, splits, dy, weight, indices, dxp, workspace, stream);
      if (cudaError_t e = dx_v2<T, G>(dt, s, dev, splits, dy, weight, indices, dxp, workspace, stream);
          e != cudaErrorNotSupported)
        return e;
      if (s.dy_ld() != s.out_features) return cudaErrorInvalidValue;  // v1 reads dY as contiguous [B, L]
      using C = DxCfg<G>;
      int wstages = 0, dstages = 0;
      dx_stages<G>(s.in_features, dev, &wstages, &dstages);
      if (wstages < 2 || wstages < s.fan_in / kKC || dstages < 2) return cudaErrorInvalidValue;
      CUtensorMap map;
      if (cudaError_t e = weight_map(&map, dt, weight, s.out_features, s.fan_in, G); e != cudaSuccess) return e;
      auto kernel = gsl_dx_sm90<T, G>;
      const int64_t smem = C::smem_bytes(s.in_features, wstages, dstages);
      if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
          e != cudaSuccess)
        return e;
      const int64_t ng = s.num_groups();
      const int64_t per = cdiv(ng, splits);
      const int64_t tiles = cdiv(s.batch, C::kBM);
      if (tiles > 65535) return cudaErrorInvalidValue;
      float* part = splits > 1 ? static_cast<float*>(workspace) : nullptr;
      kernel<<<dim3(unsigned(cdiv(ng, per)), unsigned(tiles)), kThreads, smem, stream>>>(
          map, static_cast<const T*>(dy), indices, part, static_cast<T*>(dxp), int(s.batch), int(s.in_features),
          s.out_features, int(s.fan_in), int(per), int(ng), wstages, dstages);
      if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
      if (part == nullptr) return cudaSuccess;
      return launch_dx_reduce<float, T>(part, static_cast<T*>(dxp), cdiv(ng, per), s.batch * s.in_features, stream);
    }
  });
}

// dx with fp8 weights: v3 where the bf16 dx takes it, else v2 (dY rows a multiple of 8
// elements, K of 64, 128 or 256, and its stages fit); not v1 (whose weight boxes are per group).
bool dx_fp8_supported(const GroupSparseShape& s, const DeviceInfo& dev) {
  if (!dx_supported(DType::kBFloat16, s, dev)) return false;
  return dx_v3_applies(s, dev) || dx2_fits(DType::kBFloat16, s, dev, true);
}

cudaError_t dx_fp8(bool e4m3, const GroupSparseShape& s, const DeviceInfo& dev, int64_t splits, const void* dy,
                   const void* weight, const float* row_scale, const int32_t* indices, void* dxp, void* workspace,
                   cudaStream_t stream) {
  if (!dx_fp8_supported(s, dev)) return cudaErrorInvalidValue;
  return dispatch(DType::kBFloat16, s.group_size, [&]<class T, int G>() -> cudaError_t {
    if constexpr (G < 32 || !std::is_same_v<T, __nv_bfloat16>) {
      return cudaErrorInvalidValue;
    } else {
      if (dx_v3_applies(s, dev))
        return dx_v3<T, G, true>(DType::kBFloat16, s, dev, splits, dy, weight, indices, dxp, workspace, stream,
                                 row_scale, e4m3);
      const cudaError_t e = dx_v2<T, G, true>(DType::kBFloat16, s, dev, splits, dy, weight, indices, dxp, workspace,
                                              stream, row_scale, e4m3);
      return e == cudaErrorNotSupported ? cudaErrorInvalidValue : e;
    }
  });
}

}  // namespace largeout::cuda::sm90
