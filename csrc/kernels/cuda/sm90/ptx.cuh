// Hopper (sm_90a) building blocks as thin inline-PTX wrappers: mbarriers, the bulk
// tensor copy engine (TMA), cp.async, ldmatrix, wgmma descriptors and fences. The
// wgmma instructions themselves come from CuTe's atoms (cute/arch/mma_sm90_gmma.hpp).
//
// Shared-memory tiles read by wgmma use the canonical swizzled layouts: a row of R bytes
// (R = 128 for SW128, 64 for SW64) holds 16-byte chunks whose index is XORed with
// address bits [7, 7 + log2(R / 16)), and tiles start at 1024-byte boundaries.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include <cute/arch/mma_sm90_gmma.hpp>

namespace largeout::cuda::sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ------------------------------------------------------------------ mbarrier
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
// Arrives once the calling thread's earlier cp.async copies have landed (the barrier's
// expected count includes this arrival).
__device__ __forceinline__ void mbar_arrive_cp_async(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t phase) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.b32 %0, 1, 0, p;\n}"
      : "=r"(ok)
      : "r"(smem_u32(bar)), "r"(phase)
      : "memory");
  return ok != 0;
}
// Waits for the phase to complete. A wait that sees no progress for ~2^32 cycles (a
// couple of seconds) is a bug, not slowness: it traps, so that a broken pipeline fails
// the launch (cudaErrorLaunchFailure) instead of hanging the process. (`site` names the
// wait in the source; no printf here: a call would serialize the wgmma pipeline.)
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t phase, int site = 0) {
  (void)site;
  if (mbar_try_wait(bar, phase)) return;
  const long long start = clock64();
  while (!mbar_try_wait(bar, phase)) {
    if (clock64() - start > (1ll << 32)) __trap();
  }
}

// ------------------------------------------------------------------ fences and barriers
// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads
// (wgmma operands, TMA stores).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// ------------------------------------------------------------------ copies
// TMA: a 2-D box at (c0 = inner coordinate, c1 = outer) into shared memory.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          smem_u32(dst)),
      "l"(map), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
      : "memory");
}
// TMA: a 3-D box at (c0 = innermost, c1, c2) into shared memory.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];" ::"r"(smem_u32(dst)),
      "l"(map), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// TMA store of a 2-D box from shared memory (parts outside the tensor are not written);
// completion is tracked per thread with bulk groups.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(map),
               "r"(smem_u32(src)), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Waits until this thread's bulk stores have finished reading their shared memory.
__device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }

// Bulk copy of `bytes` (a multiple of 16, both addresses 16-byte aligned).
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory");
}
// 16-byte cp.async (L2 only).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
// 16-byte cp.async that reads only the first `src_bytes` (<= 16) and zero-fills the rest.
__device__ __forceinline__ void cp_async_16_zfill(void* dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until all of this thread's cp.async copies, committed to a group or not, have completed.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// Waits until at most n (0..8) of this thread's most recent cp.async groups are pending.
__device__ __forceinline__ void cp_async_wait(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    case 7: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 8;" ::: "memory"); break;
  }
}

// ------------------------------------------------------------------ ldmatrix
// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ------------------------------------------------------------------ wgmma
enum class Swizzle : uint64_t { k128B = 1, k64B = 2, k32B = 3 };

// Shared-memory matrix descriptor: start address, leading and stride byte offsets.
__device__ __forceinline__ uint64_t make_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                              Swizzle swz) {
  uint64_t d = 0;
  d |= uint64_t((smem_addr & 0x3FFFF) >> 4);
  d |= uint64_t((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= uint64_t((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= uint64_t(swz) << 62;
  return d;
}

// The descriptor of the tile `bytes` (a multiple of 16) past desc's: the address field is the
// low 14 bits, in 16-byte units, and shared memory lies below 2^18 bytes, so the add never
// carries out of it; done in 32 bits, so that the high word stays as it is (with a 64-bit add
// the compiler moved both words to uniform registers again for every MMA).
__device__ __forceinline__ uint64_t desc_offset(uint64_t desc, uint32_t bytes) {
  return (desc & 0xFFFFFFFF00000000ull) | uint32_t(uint32_t(desc) + bytes / 16);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator registers across wgmma issue and wait.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

template <class T> struct GmmaElem;
template <> struct GmmaElem<__nv_bfloat16> { static constexpr bool kBf16 = true; };
template <> struct GmmaElem<__half> { static constexpr bool kBf16 = false; };

namespace detail {
namespace G = cute::SM90::GMMA;
// RS: A from registers (K-major), B from shared memory (K-major).
template <bool kBf16, int N> struct RsAtom;
// SS: A K-major, B MN-major, both from shared memory.
template <bool kBf16, int N> struct SsKmnAtom;
#define LARGEOUT_GMMA_ATOMS(N)                                                                         \
  template <> struct RsAtom<true, N> { using type = cute::SM90::GMMA::MMA_64x##N##x16_F32BF16BF16_RS<G::Major::K, G::Major::K>; }; \
  template <> struct RsAtom<false, N> { using type = cute::SM90::GMMA::MMA_64x##N##x16_F32F16F16_RS<G::Major::K, G::Major::K>; };   \
  template <> struct SsKmnAtom<true, N> { using type = cute::SM90::GMMA::MMA_64x##N##x16_F32BF16BF16_SS<G::Major::K, G::Major::MN>; }; \
  template <> struct SsKmnAtom<false, N> { using type = cute::SM90::GMMA::MMA_64x##N##x16_F32F16F16_SS<G::Major::K, G::Major::MN>; };
LARGEOUT_GMMA_ATOMS(16)
LARGEOUT_GMMA_ATOMS(32)
LARGEOUT_GMMA_ATOMS(64)
LARGEOUT_GMMA_ATOMS(128)
LARGEOUT_GMMA_ATOMS(256)
#undef LARGEOUT_GMMA_ATOMS

template <class Atom, int N, size_t... I>
__device__ __forceinline__ void rs(const uint32_t (&a)[4], uint64_t desc_b, float (&d)[N / 2], bool accumulate,
                                   std::index_sequence<I...>) {
  Atom::fma(a[0], a[1], a[2], a[3], desc_b, d[I]...,
            accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}
template <class Atom, int N, size_t... I>
__device__ __forceinline__ void ss(uint64_t desc_a, uint64_t desc_b, float (&d)[N / 2], bool accumulate,
                                   std::index_sequence<I...>) {
  Atom::fma(desc_a, desc_b, d[I]..., accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}
}  // namespace detail

// D[64, N] (+)= A[64, 16] B[16, N]; A in registers (the warpgroup's fragment), B in
// shared memory, K-major. Accumulators: the m64nN fp32 fragment (N / 2 per thread).
template <class T, int N>
__device__ __forceinline__ void mma_rs(const uint32_t (&a)[4], uint64_t desc_b, float (&d)[N / 2], bool accumulate) {
  using Atom = typename detail::RsAtom<GmmaElem<T>::kBf16, N>::type;
  detail::rs<Atom, N>(a, desc_b, d, accumulate, std::make_index_sequence<N / 2>{});
}
// D[64, N] (+)= A[64, 16] B[16, N]; A K-major and B MN-major, both in shared memory.
template <class T, int N>
__device__ __forceinline__ void mma_ss_kmn(uint64_t desc_a, uint64_t desc_b, float (&d)[N / 2], bool accumulate) {
  using Atom = typename detail::SsKmnAtom<GmmaElem<T>::kBf16, N>::type;
  detail::ss<Atom, N>(desc_a, desc_b, d, accumulate, std::make_index_sequence<N / 2>{});
}

// ------------------------------------------------------------------ element helpers
template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <class T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <class T> __device__ __forceinline__ T bits_to(uint16_t b);
template <> __device__ __forceinline__ __nv_bfloat16 bits_to<__nv_bfloat16>(uint16_t b) { return __ushort_as_bfloat16(b); }
template <> __device__ __forceinline__ __half bits_to<__half>(uint16_t b) { return __ushort_as_half(b); }
template <class T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Byte offset of byte `byte` of row `row` in a swizzled tile whose rows are kRowBytes
// long (128: SW128, 64: SW64): the 16-byte chunk index is XORed with address bits
// [7, 7 + log2(kRowBytes / 16)). The tile starts at a 1024-byte boundary.
template <int kRowBytes>
__device__ __forceinline__ uint32_t swz(int row, int byte) {
  static_assert(kRowBytes == 128 || kRowBytes == 64, "SW128 or SW64 rows");
  const uint32_t lin = uint32_t(row) * kRowBytes + uint32_t(byte);
  constexpr uint32_t kMask = kRowBytes == 128 ? 0x7u : 0x3u;
  return lin ^ (((lin >> 7) & kMask) << 4);
}

}  // namespace largeout::cuda::sm90
