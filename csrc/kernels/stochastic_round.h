// Stochastic rounding from fp32 to bf16, fp16, fp8 e4m3fn and fp8 e5m2 (no torch headers).
//
// y = one of the two representable neighbours of x (lo = x rounded toward zero, hi = the
// next value away from zero), hi with probability (|x| - |lo|) / (|hi| - |lo|), so that
// E[y] = x. Normal and subnormal ranges alike. Policy at the edges:
//   - |x| above the largest finite value saturates to +-max in every format (a stochastic
//     step never overflows);
//   - +-inf stays +-inf where the format has infinities (bf16, fp16, e5m2), and becomes
//     +-max in e4m3fn (which has none); NaN stays NaN; +-0 keeps its sign.
// Random bits are counter-based: Philox4x32-10 keyed by a 64-bit seed, counter (element
// index / 4, offset): the same (seed, offset) gives the same bits on any device and for
// any thread count.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#include "kernels/group_sparse.h"  // ParallelFor

#if defined(__CUDACC__)
#define LARGEOUT_HD __host__ __device__ __forceinline__
#else
#define LARGEOUT_HD inline
#endif

namespace largeout {

enum class SrFormat : int { kBFloat16 = 0, kFloat16 = 1, kFloat8E4M3FN = 2, kFloat8E5M2 = 3 };

struct SrFormatInfo {
  int mant_bits;     // stored mantissa bits
  int exp_bias;
  int min_exp;       // exponent of the smallest normal value
  double max_finite;
  bool has_inf;
  int bytes;
};

LARGEOUT_HD SrFormatInfo sr_format_info(SrFormat f) {
  switch (f) {
    case SrFormat::kBFloat16: return {7, 127, -126, 3.38953138925153547590470800371487866880e38, true, 2};
    case SrFormat::kFloat16: return {10, 15, -14, 65504.0, true, 2};
    case SrFormat::kFloat8E4M3FN: return {3, 7, -6, 448.0, false, 1};
    case SrFormat::kFloat8E5M2: return {2, 15, -14, 57344.0, true, 1};
  }
  return {7, 127, -126, 3.38953138925153547590470800371487866880e38, true, 2};
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
struct Philox4x32 {
  uint32_t v[4];
};
// (On the GPU one mul.wide.u32: from the 64-bit product ptxas emitted IMAD.WIDE plus an add
// of a zero high word for some blocks, and from __umulhi and a * b separate IMAD.HI and IMAD;
// bench/NOTES.md, session 34.)
LARGEOUT_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  uint64_t p;
  asm("mul.wide.u32 %0, %1, %2;" : "=l"(p) : "r"(a), "r"(b));
#else
  const uint64_t p = uint64_t(a) * uint64_t(b);
#endif
  *hi = uint32_t(p >> 32);
  *lo = uint32_t(p);
}
// The ten round keys of Philox4x32-10 under the 64-bit key `seed` (its two halves, each
// advanced by the Weyl constants every round). The optimizers work them out once per launch
// and their kernels read each round's key from their parameters (a constant-bank operand of
// the XOR) instead of adding the key increments per block (20 instructions of ~60).
struct PhiloxKeys {
  uint32_t k[20];
};
LARGEOUT_HD PhiloxKeys philox_round_keys(uint64_t seed) {
  PhiloxKeys ks{};
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    ks.k[2 * r] = k0;
    ks.k[2 * r + 1] = k1;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return ks;
}
// One Philox4x32 round on the counter c under the round's keys (k0, k1).
LARGEOUT_HD void philox_round(uint32_t (&c)[4], uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(0xD2511F53u, c[0], &hi0, &lo0);
  mulhilo32(0xCD9E8D57u, c[2], &hi1, &lo1);
  const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
  c[0] = n0;
  c[1] = lo1;
  c[2] = n2;
  c[3] = lo0;
}
LARGEOUT_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, const PhiloxKeys& ks) {
  Philox4x32 out{{c0, c1, c2, c3}};
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) philox_round(out.v, ks.k[2 * r], ks.k[2 * r + 1]);
  return out;
}

// Philox4x32-10 for counters whose upper words (c2, c3) and key are fixed, as the
// optimizers' are within a launch (c2, c3 the launch's offset): the first round's terms
// that depend on c2, c3 and the key alone, worked out once (the kernels computed them per
// block, as uniform instructions that still take issue slots). M0 = 0xD2511F53 and
// M1 = 0xCD9E8D57 are the round's multipliers (philox_round).
struct PhiloxFixedHigh {
  PhiloxKeys ks;
  uint32_t n0;  // hi(M1 * c2) ^ k0: the first round's new word 0 before c1
  uint32_t c1;  // lo(M1 * c2): its new word 1
  uint32_t n2;  // c3 ^ k1: its new word 2 before hi(M0 * c0)
};
LARGEOUT_HD PhiloxFixedHigh philox_fixed_high(uint64_t seed, uint32_t c2, uint32_t c3) {
  PhiloxFixedHigh f{};
  f.ks = philox_round_keys(seed);
  uint32_t hi1, lo1;
  mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
  f.n0 = hi1 ^ f.ks.k[0];
  f.c1 = lo1;
  f.n2 = c3 ^ f.ks.k[1];
  return f;
}
// The first round on the counter (c0, c1, f's c2, c3): the same words as philox_round.
LARGEOUT_HD void philox_first_round(uint32_t (&c)[4], uint32_t c0, uint32_t c1, const PhiloxFixedHigh& f) {
  uint32_t hi0, lo0;
  mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
  c[0] = f.n0 ^ c1;
  c[1] = f.c1;
  c[2] = hi0 ^ f.n2;
  c[3] = lo0;
}
// philox4x32_10(c0[b], c1[b], c2, c3, philox_round_keys(seed)) for f = philox_fixed_high(seed,
// c2, c3), for N blocks b at once: the rounds interleaved, each round's keys read once for the
// N (AdamW draws its three streams' blocks together, the fp8 SGD kernel two groups' four).
template <int N>
LARGEOUT_HD void philox4x32_10_fixed_xn(const uint32_t (&c0)[N], const uint32_t (&c1)[N], const PhiloxFixedHigh& f,
                                        uint32_t (&out)[N][4]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int b = 0; b < N; ++b) philox_first_round(out[b], c0[b], c1[b], f);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 1; r < 10; ++r) {
    const uint32_t k0 = f.ks.k[2 * r], k1 = f.ks.k[2 * r + 1];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int b = 0; b < N; ++b) philox_round(out[b], k0, k1);
  }
}

// The 32 random bits of element i.
LARGEOUT_HD uint32_t sr_random_bits(uint64_t seed, uint64_t offset, int64_t i) {
  const uint64_t block = uint64_t(i) >> 2;
  const Philox4x32 r = philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(offset), uint32_t(offset >> 32),
                                     philox_round_keys(seed));
  return r.v[i & 3];
}

// Bits of the representable magnitude v (>= 0, exactly on the format's grid, <= max).
LARGEOUT_HD uint32_t sr_encode_magnitude(double v, const SrFormatInfo& fi) {
  if (v == 0.0) return 0;
  int e2;
  frexp(v, &e2);  // v = f * 2^e2, f in [0.5, 1)
  int e = e2 - 1;
  if (e < fi.min_exp) {  // subnormal: v = m * 2^(min_exp - mant_bits)
    return uint32_t(ldexp(v, fi.mant_bits - fi.min_exp));
  }
  const uint32_t mant = uint32_t(ldexp(v, fi.mant_bits - e)) - (1u << fi.mant_bits);
  return (uint32_t(e + fi.exp_bias) << fi.mant_bits) | mant;
}

// Stochastically rounded bits of x in format f, given 32 random bits.
LARGEOUT_HD uint32_t sr_round_bits(float x, SrFormat f, uint32_t rnd) {
  const SrFormatInfo fi = sr_format_info(f);
  uint32_t xb;
  memcpy(&xb, &x, 4);
  const uint32_t sign = (xb >> 31) << (fi.bytes * 8 - 1);
  const uint32_t abs_bits = xb & 0x7fffffffu;
  const uint32_t exp_all = (1u << (fi.bytes * 8 - 1 - fi.mant_bits)) - 1u;  // all-ones exponent field
  if (abs_bits > 0x7f800000u) {                                              // NaN
    if (f == SrFormat::kFloat8E4M3FN) return 0x7Fu;                          // e4m3fn's NaN
    return (exp_all << fi.mant_bits) | (1u << (fi.mant_bits - 1));           // quiet NaN
  }
  if (abs_bits == 0x7f800000u) {  // +-inf
    if (fi.has_inf) return sign | (exp_all << fi.mant_bits);
    return sign | sr_encode_magnitude(fi.max_finite, fi);
  }
  const double a = fabs(double(x));
  if (a >= fi.max_finite) return sign | sr_encode_magnitude(fi.max_finite, fi);
  if (a == 0.0) return sign;
  int e2;
  frexp(a, &e2);
  int e = e2 - 1;
  if (e < fi.min_exp) e = fi.min_exp;
  const double ulp = ldexp(1.0, e - fi.mant_bits);
  const double lo = floor(a / ulp) * ulp;     // exact: a is an fp32 value, ulp a power of two
  const double frac = (a - lo) / ulp;         // in [0, 1), exact
  const double mag = double(rnd) < frac * 4294967296.0 ? lo + ulp : lo;
  return sign | sr_encode_magnitude(mag, fi);
}

// bf16 code of fp32 bits xb whose magnitude is below bf16's largest finite value
// (0x7F7F0000): up exactly when the dropped half plus an addend carries into the kept
// half: with the addend 65535 - (rnd >> 16) that is (rnd >> 16) < the dropped half (the
// rule below); with 0x7fff + (lowest kept bit) it is round to nearest, ties to even. Below
// the largest finite value the carry never reaches the exponent's all-ones or the sign.
LARGEOUT_HD uint32_t bf16_code_below_max(uint32_t xb, uint32_t rnd, bool nearest) {
  const uint32_t add = nearest ? 0x7fffu + ((xb >> 16) & 1u) : (~rnd >> 16);
  return (xb + add) >> 16;
}

// The same rule in integer arithmetic only (what the kernels run; sr_round_bits above is
// its specification, and a test checks that both agree bit for bit). With nearest, the
// result is round-to-nearest-even instead (rnd unused), with the same edge policy.
//
// x = M * 2^(e - 23) with M the 24-bit significand (no implicit bit for fp32 subnormals)
// and e = max(biased exponent, 1) - 127. The target grid near x has spacing 2^q with
// q = max(e, min_exp) - mant_bits, so x / 2^q = M / 2^s with s = 23 - mant_bits +
// max(0, min_exp - e) (s >= 13). The lower neighbour is M >> s units, the dropped part
// rem = M mod 2^s, and "rnd < frac * 2^32" is "rnd < rem * 2^(32 - s)", exact in 32 bits
// for s < 32 (rem < 2^s) and in 64 beyond (for s > 32: rnd * 2^(s - 32) < rem). For
// bf16, s = 16 always, so only the top 16 bits of rnd matter.
LARGEOUT_HD uint32_t sr_round_bits_fast(float x, SrFormat f, uint32_t rnd, bool nearest = false) {
  if (f == SrFormat::kBFloat16) {  // s = 16 everywhere: the code is the top half of x's bits, plus one
    uint32_t xb;
    memcpy(&xb, &x, 4);
    const uint32_t a = xb & 0x7fffffffu;
    if (a >= 0x7F7F0000u) {  // largest finite and above: saturate; inf stays; NaN becomes the quiet NaN
      return a > 0x7f800000u ? 0x7FC0u : (((xb >> 16) & 0x8000u) | (a == 0x7f800000u ? 0x7F80u : 0x7F7Fu));
    }
    return bf16_code_below_max(xb, rnd, nearest);
  }
  int m, bias, min_exp, bytes;
  uint32_t max_fp32, max_code;  // largest finite value: its fp32 bits and its code in the format
  bool has_inf;
  switch (f) {
    case SrFormat::kFloat16: m = 10; bias = 15; min_exp = -14; bytes = 2; max_fp32 = 0x477FE000u; max_code = 0x7BFFu;
      has_inf = true; break;
    case SrFormat::kFloat8E4M3FN: m = 3; bias = 7; min_exp = -6; bytes = 1; max_fp32 = 0x43E00000u; max_code = 0x7Eu;
      has_inf = false; break;
    case SrFormat::kFloat8E5M2: m = 2; bias = 15; min_exp = -14; bytes = 1; max_fp32 = 0x47600000u; max_code = 0x7Bu;
      has_inf = true; break;
    default: m = 7; bias = 127; min_exp = -126; bytes = 2; max_fp32 = 0x7F7F0000u; max_code = 0x7F7Fu;
      has_inf = true; break;
  }
  uint32_t xb;
  memcpy(&xb, &x, 4);
  const int top = bytes * 8 - 1;
  const uint32_t sign = (xb >> 31) << top;
  const uint32_t a = xb & 0x7fffffffu;
  const uint32_t exp_all = (1u << (top - m)) - 1u;
  if (a > 0x7f800000u) return f == SrFormat::kFloat8E4M3FN ? 0x7Fu : ((exp_all << m) | (1u << (m - 1)));
  if (a == 0x7f800000u) return sign | (has_inf ? (exp_all << m) : max_code);
  if (a >= max_fp32) return sign | max_code;
  if (a == 0) return sign;
  const int biased = int(a >> 23);
  const uint32_t M = biased ? ((a & 0x7fffffu) | 0x800000u) : (a & 0x7fffffu);
  const int e = (biased ? biased : 1) - 127;
  const int s = 23 - m + (min_exp > e ? min_exp - e : 0);
  const uint32_t lo = s < 32 ? (M >> s) : 0u;
  bool up;
  if (s < 32) {  // the common case, in 32-bit arithmetic: rem < 2^s, so rem * 2^(32 - s) < 2^32
    const uint32_t rem = M & ((1u << s) - 1u);
    const uint32_t half = 1u << (s - 1);
    up = nearest ? (rem > half || (rem == half && (lo & 1u))) : rnd < (rem << (32 - s));
  } else {  // deep in the subnormal range: lo = 0 and rem = M < 2^24 <= 2^(s - 1), never up to nearest
    up = !nearest && (s == 32 ? rnd < M : (s - 32 >= 24) ? (rnd == 0u && M != 0u) : ((uint64_t(rnd) << (s - 32)) < M));
  }
  const uint32_t units = lo + (up ? 1u : 0u);
  if (e < min_exp) return sign | units;  // subnormal grid (units == 2^m is the smallest normal)
  return sign | ((uint32_t(e + bias) << m) + units - (1u << m));
}

namespace cpu {
// out (1 or 2 bytes per element, the format's bit layout) = SR(x); n elements.
void stochastic_round(SrFormat f, const float* x, void* out, int64_t n, uint64_t seed, uint64_t offset,
                      const ParallelFor& pf);
}  // namespace cpu

}  // namespace largeout
