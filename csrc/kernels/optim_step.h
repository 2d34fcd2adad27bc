// Fused optimizer steps for low-precision parameters (no torch headers): the per-element
// arithmetic, shared by the CPU loop and the CUDA kernel so that both give the same bits.
//
// A launch updates a list of tensors ("slots") of one parameter dtype. Every element is
// loaded to fp32, updated in fp32 with explicitly rounded operations (no contraction into
// FMAs, so host and device agree), and stored back in its own dtype: stochastically
// rounded (kernels/stochastic_round.h) or to nearest-even. Random bits: element i of a
// slot is element (base + i) of the launch; its group of 8, v = (base + i) / 8, draws
// Philox4x32-10 blocks (v * 6 + 2 * stream + h, offset) under the launch's key, stream
// 0 for the parameter, 1 for the first buffer (momentum, exp_avg), 2 for exp_avg_sq.
// A bf16 target takes 16 bits per element (its rule reads only the top 16: one block per
// 8 elements); other targets 32 bits (two blocks).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/stochastic_round.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#endif

// "#pragma unroll" for the device compilation only (the host compiler would warn).
#if defined(__CUDA_ARCH__)
#define LARGEOUT_UNROLL _Pragma("unroll")
#else
#define LARGEOUT_UNROLL
#endif

namespace largeout {

enum class ElemType : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2, kE4M3 = 3, kE5M2 = 4 };

LARGEOUT_HD constexpr int elem_bytes(ElemType t) {
  return t == ElemType::kF32 ? 4 : (t == ElemType::kE4M3 || t == ElemType::kE5M2) ? 1 : 2;
}

LARGEOUT_HD SrFormat sr_format_of(ElemType t) {
  switch (t) {
    case ElemType::kF16: return SrFormat::kFloat16;
    case ElemType::kE4M3: return SrFormat::kFloat8E4M3FN;
    case ElemType::kE5M2: return SrFormat::kFloat8E5M2;
    default: return SrFormat::kBFloat16;
  }
}

LARGEOUT_HD float f32_from_bits(uint32_t b) {
  float f;
  memcpy(&f, &b, 4);
  return f;
}

// Exact decoding of a 16- or 8-bit float code to fp32.
LARGEOUT_HD float decode_small_float(uint32_t code, int bits, int m, int bias, bool e4m3fn) {
  const uint32_t sign = (code >> (bits - 1)) & 1u;
  const uint32_t exp = (code >> m) & ((1u << (bits - 1 - m)) - 1u);
  const uint32_t man = code & ((1u << m) - 1u);
  const uint32_t exp_all = (1u << (bits - 1 - m)) - 1u;
  uint32_t out;
  if (e4m3fn ? (exp == exp_all && man == ((1u << m) - 1u)) : (exp == exp_all)) {
    out = (e4m3fn || man) ? 0x7fc00000u : 0x7f800000u;  // NaN, or inf
  } else if (exp == 0) {
    // man * 2^(1 - bias - m): exact in fp32 for every format here
    const float v = float(man) * f32_from_bits(uint32_t(127 + 1 - bias - m) << 23);
    memcpy(&out, &v, 4);
  } else {
    out = (uint32_t(int(exp) - bias + 127) << 23) | (man << (23 - m));
  }
  return f32_from_bits(out | (sign << 31));
}

// bf16 bits of an fp8 code (e4m3fn or e5m2): exact, every fp8 value is a bf16 value (the
// decoded fp32 value's top half; NaN stays NaN, inf stays inf).
LARGEOUT_HD uint16_t fp8_to_bf16_bits(uint32_t code, bool e4m3fn) {
  const float v = e4m3fn ? decode_small_float(code, 8, 3, 7, true) : decode_small_float(code, 8, 2, 15, false);
  uint32_t b;
  memcpy(&b, &v, 4);
  return uint16_t(b >> 16);
}

// fp32 value of a code of type t (for fp32 the code is the float's bits).
LARGEOUT_HD float decode_code(uint32_t code, ElemType t) {
  switch (t) {
    case ElemType::kF32: return f32_from_bits(code);
    case ElemType::kBF16: return f32_from_bits(code << 16);
    case ElemType::kF16:
#if defined(__CUDA_ARCH__)
      return __half2float(__ushort_as_half(uint16_t(code)));  // exact, as the generic decoding
#else
      return decode_small_float(code, 16, 10, 15, false);
#endif
#if defined(__CUDA_ARCH__)
    // Exact through fp16 (every e4m3 and e5m2 value is an fp16 value): the e4m3 -> f16
    // conversion (one instruction on sm_89+), and e5m2's code is an fp16's top byte. NaN
    // stays NaN; its payload bits may differ from the CPU decoding's (as a NaN out of any
    // arithmetic does between the two).
    case ElemType::kE4M3: return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(code), __NV_E4M3)));
    case ElemType::kE5M2: return __half2float(__ushort_as_half(uint16_t(code << 8)));
#else
    case ElemType::kE4M3: return decode_small_float(code, 8, 3, 7, true);
    case ElemType::kE5M2: return decode_small_float(code, 8, 2, 15, false);
#endif
  }
  return 0.f;
}

// The 8 one-byte codes c as two little-endian words (code j in byte j % 4 of word j / 4;
// each c below 256, as every producer of codes gives them). Written as two 16-bit halves
// each, the form in which the compiler folds it: from unpacked words, into the words
// themselves; from paired conversions' results, into the conversions (as one expression of
// 4 bytes it built each word from the bytes again, ~13 instructions per group of 8;
// bench/NOTES.md, session 33).
LARGEOUT_HD uint32_t pack_bytes4(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  return (c0 | (c1 << 8)) | ((c2 | (c3 << 8)) << 16);
}

// fp32 values of 8 codes of type T: decode_code element by element; fp8 on the GPU two at
// a time (one paired conversion to f16x2, exact like the single one, from the codes packed
// into words: the fp8 optimizer steps are bound by their instructions).
template <ElemType T>
LARGEOUT_HD void decode_group(const uint32_t (&c)[8], float (&out)[8]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if constexpr (T == ElemType::kE4M3 || T == ElemType::kE5M2) {
    constexpr __nv_fp8_interpretation_t kKind = T == ElemType::kE4M3 ? __NV_E4M3 : __NV_E5M2;
    const uint32_t w0 = pack_bytes4(c[0], c[1], c[2], c[3]), w1 = pack_bytes4(c[4], c[5], c[6], c[7]);
    const uint32_t pairs[4] = {w0, w0 >> 16, w1, w1 >> 16};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(pairs[k]), kKind)));
      out[2 * k] = f.x;  // (the pair's low byte)
      out[2 * k + 1] = f.y;
    }
  } else
#endif
  {
    LARGEOUT_UNROLL
    for (int j = 0; j < 8; ++j) out[j] = decode_code(c[j], T);
  }
}

// Code of v in type t: stochastically rounded with rnd, or to nearest-even.
LARGEOUT_HD uint32_t round_code(float v, ElemType t, uint32_t rnd, bool nearest) {
  if (t == ElemType::kF32) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return b;
  }
  return sr_round_bits_fast(v, sr_format_of(t), rnd, nearest);
}

LARGEOUT_HD uint32_t load_code(const void* p, ElemType t, int64_t i) {
  switch (elem_bytes(t)) {
    case 4: return static_cast<const uint32_t*>(p)[i];
    case 2: return static_cast<const uint16_t*>(p)[i];
    default: return static_cast<const uint8_t*>(p)[i];
  }
}

LARGEOUT_HD void store_code(void* p, ElemType t, int64_t i, uint32_t c) {
  switch (elem_bytes(t)) {
    case 4: static_cast<uint32_t*>(p)[i] = c; break;
    case 2: static_cast<uint16_t*>(p)[i] = uint16_t(c); break;
    default: static_cast<uint8_t*>(p)[i] = uint8_t(c); break;
  }
}

// Correctly rounded fp32 operations that the compiler may not fuse.
#if defined(__CUDA_ARCH__)
LARGEOUT_HD float op_mul(float a, float b) { return __fmul_rn(a, b); }
LARGEOUT_HD float op_add(float a, float b) { return __fadd_rn(a, b); }
LARGEOUT_HD float op_sub(float a, float b) { return __fsub_rn(a, b); }
LARGEOUT_HD float op_div(float a, float b) { return __fdiv_rn(a, b); }
LARGEOUT_HD float op_sqrt(float a) { return __fsqrt_rn(a); }
#else
// (the CPU source is compiled with -ffp-contract=off)
LARGEOUT_HD float op_mul(float a, float b) { return a * b; }
LARGEOUT_HD float op_add(float a, float b) { return a + b; }
LARGEOUT_HD float op_sub(float a, float b) { return a - b; }
LARGEOUT_HD float op_div(float a, float b) { return a / b; }
LARGEOUT_HD float op_sqrt(float a) { return std::sqrt(a); }
#endif

// op_sqrt and op_div of 8 elements, with the same bits. On the GPU, __fsqrt_rn and
// __fdiv_rn each compile to a short exact sequence for ordinary operands (a MUFU
// approximation and 3-5 dependent FMAs) behind a range test and a branch per element to
// a slow path. In AdamW's group of 8 those branches made the 8 elements' chains run one
// after another. Here the range test is made once for the group (the smallest and largest
// magnitudes against the bounds): when every operand lies in the range below, the 8
// sequences run without a branch and the scheduler interleaves them; otherwise the group
// takes op_sqrt / op_div (bench/NOTES.md, session 32).
//   sqrt: x = +0, or x in [2^-101, FLT_MAX]: the compiler's own fast-path test for
//         sqrt.rn.f32 (bits - 0x0d000000 <= 0x727fffff), and its sequence: r = rsqrt
//         approximation, s = x r, h = r / 2, result s + (x - s s) h. (r is clamped to
//         2^64, which changes nothing in the range and makes x = +0 give +0.)
//   div:  a = +-0, or a and b both with unbiased exponent in [-60, 60]: then no step
//         underflows or overflows (1/b, the quotient in [2^-121, 2^121], and the remainder
//         r = a - b q, exact), so the result is what the sequence of __fdiv_rn's own fast
//         path (y = 1/b approximation refined once, q = a y, q + r y) gives at exponents
//         near 0, where nvcc takes that path. Its exactness rests on the hardware's rcp
//         approximation, not on a bound alone: one approximation within 1 ulp but on the
//         wrong side at b = 2 - 2^-23 would round 1 / b down (an exact emulation in
//         session 32 found it to be the only such case); the tests divide every b
//         significand by several a, and that case at every exponent pair, on the GPU.
//         Where r = 0, q is the quotient (for a = +-0 a zero of the right sign, which
//         q + r y would lose).
// Checked against the float64 operations over every non-negative float (sqrt) and random
// and edge operands (division): tests/test_optim.py::test_group_sqrt_*.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float rsqrt_approx(float x) {
  float r;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
#endif

LARGEOUT_HD void sqrt_group(const float (&x)[8], float (&out)[8]) {
#if defined(__CUDA_ARCH__)
  uint32_t lo = 0xffffffffu, hi = 0u;  // smallest nonzero bits (as bits - 1), largest bits
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint32_t b = __float_as_uint(x[j]);
    lo = min(lo, b - 1u);
    hi = max(hi, b);  // (a negative x has the sign bit: above the bound)
  }
  if (lo >= 0x0d000000u - 1u && hi <= 0x7f7fffffu) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float r = fminf(rsqrt_approx(x[j]), 0x1p64f);
      const float s = __fmul_rn(x[j], r), hr = __fmul_rn(r, 0.5f);
      out[j] = __fmaf_rn(__fmaf_rn(-s, s, x[j]), hr, s);
    }
    return;
  }
#endif
  LARGEOUT_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = op_sqrt(x[j]);
}

LARGEOUT_HD void div_group(const float (&a)[8], const float (&b)[8], float (&out)[8]) {
#if defined(__CUDA_ARCH__)
  // magnitudes' bits: a's smallest nonzero (as bits - 1) and largest, b's smallest and largest
  uint32_t alo = 0xffffffffu, ahi = 0u, blo = 0xffffffffu, bhi = 0u;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint32_t ma = __float_as_uint(a[j]) & 0x7fffffffu, mb = __float_as_uint(b[j]) & 0x7fffffffu;
    alo = min(alo, ma - 1u);
    ahi = max(ahi, ma);
    blo = min(blo, mb);
    bhi = max(bhi, mb);
  }
  constexpr uint32_t kLo = 67u << 23, kEnd = 188u << 23;  // 2^-60, 2^61
  if (alo >= kLo - 1u && ahi < kEnd && blo >= kLo && bhi < kEnd) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float y0 = rcp_approx(b[j]);
      const float y = __fmaf_rn(y0, __fmaf_rn(-b[j], y0, 1.f), y0);
      const float q0 = __fmul_rn(a[j], y);
      const float r = __fmaf_rn(-b[j], q0, a[j]);
      out[j] = r == 0.f ? q0 : __fmaf_rn(y, r, q0);
    }
    return;
  }
#endif
  LARGEOUT_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = op_div(a[j], b[j]);
}

// bf16 bits of an fp8 code times a row scale: the fp32 product rounded to nearest-even
// (saturating at bf16's largest finite value); exact for the layers' power-of-two scales.
LARGEOUT_HD uint16_t fp8_to_bf16_bits_scaled(uint32_t code, bool e4m3fn, float scale) {
  const float v = decode_code(code, e4m3fn ? ElemType::kE4M3 : ElemType::kE5M2);
  return uint16_t(sr_round_bits_fast(op_mul(v, scale), SrFormat::kBFloat16, 0u, true));
}

// One tensor of a launch. Unused buffers are null.
struct OptimSlot {
  void* param;
  const void* grad;
  void* buf1;  // SGD: momentum buffer; AdamW: exp_avg
  void* buf2;  // AdamW: exp_avg_sq
  void* comp;  // Kahan compensation
  int64_t numel;
  int64_t base;  // first element's index in the launch's random stream (a multiple of 8)
  // Scaled fp8 parameters (largeout.nn's weight_scale): the parameter's value is its code
  // times row_scale[i / row_len] (row_len a multiple of 8, so a group of 8 is in one row);
  // the gradient and the buffers are in those units. Null for unscaled parameters.
  const float* row_scale;
  int64_t row_len;
};

struct OptimTypes {
  ElemType param, grad, state, comp;
};

enum class OptimKind : int32_t { kSGD = 0, kAdamW = 1 };

struct OptimHyper {
  OptimKind kind;
  bool stochastic;  // else round to nearest-even
  bool kahan;
  // SGD
  float lr, momentum, dampening, weight_decay;
  bool nesterov, first;  // first: the momentum buffer starts as the (decayed) gradient
  // AdamW: update = -step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps) - lr * weight_decay * p
  float beta1, beta2, eps, step_size, inv_sqrt_bc2;
  // 1 - beta1, 1 - beta2, 1 - dampening, each worked out in double on the host and rounded
  // once (as torch.optim's scalars are): 1 - beta2 in float from a float beta2 = 0.99999 is
  // 1.00136e-5, 0.14% off, which skews the second moment
  float one_minus_beta1, one_minus_beta2, one_minus_dampening;
  uint64_t seed, offset;
  PhiloxFixedHigh philox;  // philox_fixed_high(seed, offset's halves): set by with_round_keys
};

// h with its Philox round keys and first-round terms worked out from its seed and offset
// (every launch's hyperparameters pass through this: GroupRandom reads them, not the seed).
inline OptimHyper with_round_keys(OptimHyper h) {
  h.philox = philox_fixed_high(h.seed, uint32_t(h.offset), uint32_t(h.offset >> 32));
  return h;
}

// Random bits of element j (0..7) of group v for a stream.
struct GroupRandom {
  uint32_t w[8];
  // The first Philox block of group v's stream (the layout at the top of this file).
  static LARGEOUT_HD uint64_t first_block(uint64_t v, int stream) { return v * 6 + uint64_t(stream) * 2; }
  // 8 words of a bf16 target from one block: the top 16 bits of each half-word's value
  LARGEOUT_HD void split16(const uint32_t (&a)[4]) {
    LARGEOUT_UNROLL
    for (int j = 0; j < 8; ++j) w[j] = (j & 1) ? (a[j >> 1] & 0xffff0000u) : (a[j >> 1] << 16);
  }
  // Philox blocks blk[0..N) of the launch's key, computed together (the rounds interleaved,
  // each round key read once for the N).
  template <int N>
  static LARGEOUT_HD void blocks(const OptimHyper& h, const uint64_t (&blk)[N], uint32_t (&c)[N][4]) {
    uint32_t c0[N], c1[N];
    LARGEOUT_UNROLL
    for (int b = 0; b < N; ++b) {
      c0[b] = uint32_t(blk[b]);
      c1[b] = uint32_t(blk[b] >> 32);
    }
    philox4x32_10_fixed_xn<N>(c0, c1, h.philox, c);
  }
  // The 8 words of a target other than bf16 from its two blocks.
  LARGEOUT_HD void join32(const uint32_t (&a)[4], const uint32_t (&b)[4]) {
    LARGEOUT_UNROLL
    for (int j = 0; j < 4; ++j) {
      w[j] = a[j];
      w[4 + j] = b[j];
    }
  }
  // Streams 0, 1 and 2 of group v, all bf16 targets: the words fill gives each, from the
  // three blocks computed together.
  static LARGEOUT_HD void fill3_bf16(const OptimHyper& h, uint64_t v, GroupRandom& r0, GroupRandom& r1,
                                     GroupRandom& r2) {
    uint32_t c[3][4];
    blocks<3>(h, {first_block(v, 0), first_block(v, 1), first_block(v, 2)}, c);
    r0.split16(c[0]);
    r1.split16(c[1]);
    r2.split16(c[2]);
  }
  // Stream `stream` of groups va and vb for a target other than bf16 (two blocks each), the
  // four blocks computed together: the words fill gives each.
  static LARGEOUT_HD void fill_pair32(const OptimHyper& h, uint64_t va, uint64_t vb, int stream, GroupRandom& ra,
                                      GroupRandom& rb) {
    const uint64_t a = first_block(va, stream), b = first_block(vb, stream);
    uint32_t c[4][4];
    blocks<4>(h, {a, a + 1, b, b + 1}, c);
    ra.join32(c[0], c[1]);
    rb.join32(c[2], c[3]);
  }
  LARGEOUT_HD void fill(const OptimHyper& h, uint64_t v, int stream, ElemType target) {
    const uint64_t blk = first_block(v, stream);
    if (target == ElemType::kBF16) {
      uint32_t c[1][4];
      blocks<1>(h, {blk}, c);
      split16(c[0]);
    } else {
      uint32_t c[2][4];
      blocks<2>(h, {blk, blk + 1}, c);
      join32(c[0], c[1]);
    }
  }
};

LARGEOUT_HD bool needs_random(const OptimHyper& h, ElemType t) { return h.stochastic && t != ElemType::kF32; }

// The codes of up to 8 consecutive elements of one slot, in and out.
struct OptimGroup {
  uint32_t p[8], g[8], b1[8], b2[8], c[8];
};

// The types of a launch are template arguments (so each kernel is small and every
// format switch folds away): P the parameter, S the state (SGD's momentum, AdamW's
// moments); Kahan buffers have type comp_type(P). The gradient's type is an argument (the
// CUDA kernels make it a constant for the usual pairings: optim_step.cu).
constexpr ElemType comp_type(ElemType p) {
  return (p == ElemType::kE4M3 || p == ElemType::kE5M2) ? ElemType::kBF16 : p;
}

// The fp8 layer's input quantization (largeout.fp8_quantize), CPU and CUDA: |x| as fp32
// bits (non-negative floats order as unsigned integers, NaN above inf, so the maximum of
// the bits is the amax and a NaN propagates); the scale amax / 448, 1 where that is 0
// (amax 0, or below 224 * 2^-149) or NaN; the code of x / scale, to nearest-even.
LARGEOUT_HD uint32_t abs_bits(const void* x, ElemType t, int64_t i) {
  const float v = decode_code(load_code(x, t, i), t);
  uint32_t b;
  memcpy(&b, &v, 4);
  return b & 0x7fffffffu;
}
LARGEOUT_HD float e4m3_quant_scale(uint32_t amax_bits) {
  const float s = op_div(f32_from_bits(amax_bits), 448.f);
  return s > 0.f ? s : 1.f;
}
LARGEOUT_HD uint8_t e4m3_quant_code(const void* x, ElemType t, int64_t i, float scale) {
  return uint8_t(sr_round_bits_fast(op_div(decode_code(load_code(x, t, i), t), scale), SrFormat::kFloat8E4M3FN, 0u,
                                    true));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
// The fp8 codes of a, b, c, d (T = e4m3fn or e5m2; round to nearest even, saturating to
// the largest finite value) as one word, a in its low byte: two paired conversions whose
// 16-bit results the hardware merges into the halves of the word (through
// __nv_cvt_float2_to_fp8x2 each result was zero-extended to 32 bits, two instructions per
// pair, and shifted into place again at the store).
template <ElemType T>
__device__ __forceinline__ uint32_t fp8x4_satfinite(float a, float b, float c, float d) {
  uint32_t w;
  if constexpr (T == ElemType::kE4M3) {
    asm("{\n\t.reg .b16 lo, hi;\n\tcvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n\t"
        "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n\tmov.b32 %0, {lo, hi};\n\t}"
        : "=r"(w) : "f"(a), "f"(b), "f"(c), "f"(d));
  } else {
    asm("{\n\t.reg .b16 lo, hi;\n\tcvt.rn.satfinite.e5m2x2.f32 lo, %2, %1;\n\t"
        "cvt.rn.satfinite.e5m2x2.f32 hi, %4, %3;\n\tmov.b32 %0, {lo, hi};\n\t}"
        : "=r"(w) : "f"(a), "f"(b), "f"(c), "f"(d));
  }
  return w;
}

// fp8 codes (T = e4m3fn or e5m2) of 8 finite values (false, nothing written, where one is
// inf or NaN): the same codes as sr_round_bits_fast, in fp32 arithmetic that is exact at
// every step, and the hardware's paired conversion (exact, as the rounded values are on the
// format's grid, or saturating):
//   ulp   = the grid spacing at |x|: 2^(max(e, min_exp) - m), from the exponent field;
//   t     = |x| / ulp (a power-of-two scaling, t < 2^(m + 1)); lo = floor(t);
//   frac  = t - lo, exact (lo <= t < lo + 1, and lo >= t / 2 once t >= 1);
//   up    = rnd < frac * 2^32 (the specification's test), i.e. rnd < ceil(frac * 2^32):
//           frac * 2^32 is exact and below 2^32, so its ceiling is too;
//   value = +-(lo + up) * ulp, on the grid (lo + up <= 2^(m + 1): at most the next binade),
//           as one fused lo * ulp + (up ? ulp : 0), exact.
// From the largest finite value up, value is at least that value (or +-inf, for |x| near
// 2^128), and the conversion's saturation (.satfinite) gives +-max, the rule's policy; so
// one test of the exponent fields (inf, NaN) for the group suffices. Nearest: the
// conversion's own round-to-nearest-even and saturation, the rule's (subnormals included).
// No branches per element: the integer rule's ~30 instructions with branches per element
// were the fp8 steps' bound (bench/NOTES.md). (An integer path for groups of zeros and
// normal values, one add on the fp32 word, measured slower: most of the benchmark's
// weights are e4m3 subnormals; bench/NOTES.md, session 32.)
template <ElemType T>
__device__ __forceinline__ bool fp8_group_codes(const float (&v)[8], const uint32_t (&rnd)[8], bool near,
                                                uint32_t (&words)[2]) {
  static_assert(T == ElemType::kE4M3 || T == ElemType::kE5M2);
  constexpr bool kE4M3 = T == ElemType::kE4M3;
  constexpr uint32_t kMinNormal = kE4M3 ? 0x3C800000u : 0x38800000u;  // 2^-6, 2^-14
  constexpr uint32_t kMantShift = (kE4M3 ? 3u : 2u) << 23;
  uint32_t ebits[8], emax = 0;  // the exponent fields (shared with the rounding's grid spacing)
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    ebits[j] = __float_as_uint(v[j]) & 0x7f800000u;
    emax = max(emax, ebits[j]);
  }
  if (emax == 0x7f800000u) return false;  // inf and NaN: the per-element rule
  auto convert = [&](const float (&r)[8]) {
    words[0] = fp8x4_satfinite<T>(r[0], r[1], r[2], r[3]);
    words[1] = fp8x4_satfinite<T>(r[4], r[5], r[6], r[7]);
  };
  if (near) {
    convert(v);  // (each branch converts its own values: joined on 8 values, ~8 register copies per group)
  } else {
    float r[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // (max(e, min normal) - shift as one signed add-and-max, VIADDMNMX: one ALU instruction
      // fewer per element, the ALU being the pipe that throttles this kernel; e - shift does
      // not overflow an int, e <= 0x7f000000)
      const uint32_t ulp_bits = uint32_t(max(int(ebits[j]) - int(kMantShift), int(kMinNormal - kMantShift)));
      const float ulp = __uint_as_float(ulp_bits), inv_ulp = __uint_as_float(0x7f000000u - ulp_bits);
      const float t = __fmul_rn(fabsf(v[j]), inv_ulp);
      const float lo = floorf(t);
      const uint32_t threshold = __float2uint_ru(__fmul_rn(__fsub_rn(t, lo), 4294967296.f));
      r[j] = copysignf(__fmaf_rn(lo, ulp, rnd[j] < threshold ? ulp : 0.f), v[j]);  // (lo + up) * ulp
    }
    convert(r);
  }
  return true;
}

// The per-element rule, for the groups that fp8_group_codes declines (one value inf or
// NaN): out of line and by value (no array in local
// memory), so that its registers do not weigh on the kernels' common path.
template <ElemType T>
__device__ __noinline__ uint32_t fp8_code_out_of_line(float v, uint32_t rnd, bool near) {
  return round_code(v, T, rnd, near);
}
#endif

// The codes of 8 values in type T: stochastically rounded with the random bits rnd, or to
// nearest-even (near; rnd unused); the same codes as sr_round_bits_fast element by element
// (checked by _sr_rule_mismatches, on the CPU and on the GPU). bf16 makes the rule's one
// per-element test (saturation, inf, NaN: magnitudes from the largest finite value up) once
// for the group; below it, one add and one shift per element. fp8 on the GPU:
// fp8_group_codes, unless a value is inf or NaN (it saturates finite values itself). (The
// integer rule without branches for e4m3 groups in [2^-17, 448) made fp8 SGD 2.90 -> 4.19
// ms on an H200: more spills; bench/NOTES.md.)
template <ElemType T>
LARGEOUT_HD void round_group_codes(const float (&v)[8], const uint32_t (&rnd)[8], bool near, uint32_t (&out)[8]) {
  if constexpr (T == ElemType::kBF16) {
    uint32_t xb[8], amax = 0;
    LARGEOUT_UNROLL
    for (int j = 0; j < 8; ++j) {
      memcpy(&xb[j], &v[j], 4);
      const uint32_t a = xb[j] & 0x7fffffffu;
      amax = a > amax ? a : amax;
    }
    if (amax < 0x7F7F0000u) {
      if (near) {
        LARGEOUT_UNROLL
        for (int j = 0; j < 8; ++j) out[j] = bf16_code_below_max(xb[j], 0u, true);
      } else {
        LARGEOUT_UNROLL
        for (int j = 0; j < 8; ++j) out[j] = bf16_code_below_max(xb[j], rnd[j], false);
      }
      return;
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if constexpr (T == ElemType::kE4M3 || T == ElemType::kE5M2) {
    // Both paths join on the two words of codes (as the paired conversions give them), so
    // that the compiler folds the unpacking below into the stores' repacking (joined on 8
    // codes, ~20 instructions per group unpacked and repacked them; on 4 pairs, ~8).
    uint32_t words[2];
    if (!fp8_group_codes<T>(v, rnd, near, words)) {
      uint32_t c[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) c[j] = fp8_code_out_of_line<T>(v[j], rnd[j], near) & 0xffu;
      words[0] = pack_bytes4(c[0], c[1], c[2], c[3]);
      words[1] = pack_bytes4(c[4], c[5], c[6], c[7]);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = (words[j >> 2] >> (8 * (j & 3))) & 0xffu;
  } else
#endif
  {
    LARGEOUT_UNROLL
    for (int j = 0; j < 8; ++j) out[j] = round_code(v[j], T, rnd[j], near);
  }
}

// Test hook (largeout._sr_rule_mismatches, CPU and CUDA): how many of the up to 8 elements
// from i0 of (x, rnd) (n elements) the optimizers' group rounding codes differently from the
// per-element rule, stochastically with rnd and to nearest (the group padded with zeros,
// which are not compared).
template <ElemType T>
LARGEOUT_HD int group_rule_mismatches(const float* x, const uint32_t* rnd, int64_t n, int64_t i0) {
  const SrFormat f = sr_format_of(T);
  float v[8];
  uint32_t r[8], sr[8], rn[8];
  LARGEOUT_UNROLL
  for (int j = 0; j < 8; ++j) {
    v[j] = i0 + j < n ? x[i0 + j] : 0.f;
    r[j] = i0 + j < n ? rnd[i0 + j] : 0u;
  }
  round_group_codes<T>(v, r, false, sr);
  round_group_codes<T>(v, r, true, rn);
  int bad = 0;
  for (int j = 0; j < 8 && i0 + j < n; ++j)
    bad += int(sr[j] != sr_round_bits_fast(v[j], f, r[j])) + int(rn[j] != sr_round_bits_fast(v[j], f, 0u, true));
  return bad;
}

// The random bits of group v's stream for a tensor of type T. A bf16 target's (one Philox
// block: 4 words) are drawn at the start of the update (early), where they overlap the
// loads' latency; fp16 and fp8 targets' (two blocks: 8 words) right before their rounding
// (late). Drawn early for every stream, the fp8 SGD kernel spilled 116 bytes at its 64
// registers; drawn late for every stream, the fp8 SGD step went 2.09 -> 1.67 ms on an H100
// but AdamW with bf16 state 5.69 -> 5.9-6.0 ms (one group per thread: nothing else to do
// while the loads land; bench/NOTES.md, session 19).
template <ElemType T>
struct StreamBits {
  static constexpr bool kEarly = T == ElemType::kBF16;
  GroupRandom r;
  LARGEOUT_HD void draw(const OptimHyper& h, uint64_t v, int stream) {
    if (needs_random(h, T)) {
      r.fill(h, v, stream, T);
    } else {
      // (Unread: rounding to nearest, or fp32. Left unset on the GPU, which saves the 8
      // moves that run before the stochastic branch too, the optimizer kernels spilled up
      // to 400 bytes; bench/NOTES.md, session 33.)
      LARGEOUT_UNROLL
      for (int j = 0; j < 8; ++j) r.w[j] = 0u;
    }
  }
  LARGEOUT_HD void early(const OptimHyper& h, uint64_t v, int stream) {
    if constexpr (kEarly) draw(h, v, stream);
  }
  LARGEOUT_HD const uint32_t (&late(const OptimHyper& h, uint64_t v, int stream))[8] {
    if constexpr (!kEarly) draw(h, v, stream);
    return r.w;
  }
};

// Updates the 8 elements of group q (the group starting at element i0 of slot s; lanes
// past the slot's end are computed but never stored). kScaled: the slot's parameter has a
// row scale (OptimSlot::row_scale): its values are decoded times the scale, updated as any
// parameter's, and divided by the scale before rounding (exact for the power-of-two scales
// largeout.nn uses: rounding the quotient to the format is rounding the value to the
// format's grid times the scale). pre_p: the parameter stream's random words of this group,
// already drawn by the caller (the fp8 SGD kernel draws two groups' at once), else null.
template <OptimKind K, ElemType P, ElemType S, bool kScaled = false>
LARGEOUT_HD void optim_update_codes(OptimGroup& q, const OptimSlot& s, ElemType G, const OptimHyper& h, int64_t i0,
                                    const GroupRandom* pre_p = nullptr) {
  struct {
    ElemType param = P, grad, state = S, comp = comp_type(P);
  } t;
  t.grad = G;
  constexpr int n = 8;
  const uint64_t v = uint64_t(s.base + i0) >> 3;
  const bool has_buf1 = s.buf1 != nullptr;
  const bool near = !h.stochastic;
  StreamBits<P> bits_p;
  StreamBits<S> bits_1, bits_2;
  if constexpr (K == OptimKind::kAdamW && P == ElemType::kBF16 && S == ElemType::kBF16) {
    // (the three streams' blocks together: one test of the rounding mode, the rounds interleaved)
    if (h.stochastic) {
      GroupRandom::fill3_bf16(h, v, bits_p.r, bits_1.r, bits_2.r);
    } else {
      bits_p.draw(h, v, 0);  // (rounding to nearest reads no bits)
      bits_1.draw(h, v, 1);
      bits_2.draw(h, v, 2);
    }
  } else {
    bits_p.early(h, v, 0);
    if (K == OptimKind::kAdamW || has_buf1) bits_1.early(h, v, 1);
    if (K == OptimKind::kAdamW) bits_2.early(h, v, 2);
  }
  [[maybe_unused]] float scale = 1.f;
  if constexpr (kScaled) scale = s.row_scale[i0 / s.row_len];
  // The parameter's 8 values (times the row scale where it has one).
  auto param_values = [&](const uint32_t (&codes)[8], float (&out)[8]) {
    decode_group<P>(codes, out);
    if constexpr (kScaled) {
      LARGEOUT_UNROLL
      for (int j = 0; j < 8; ++j) out[j] = op_mul(out[j], scale);
    }
  };
  // The gradient's type: a constant in the CUDA kernels for the usual pairings (the
  // switch folds away), else read at run time: one switch for the group, each case
  // decoding all 8 codes (a switch per element was an indirect branch per element).
  float gf[n];
  switch (t.grad) {
#define LARGEOUT_DECODE_GRADS(T)                                 \
  case T:                                                        \
    LARGEOUT_UNROLL                                              \
    for (int j = 0; j < n; ++j) gf[j] = decode_code(q.g[j], T); \
    break;
    LARGEOUT_DECODE_GRADS(ElemType::kF32)
    LARGEOUT_DECODE_GRADS(ElemType::kBF16)
    LARGEOUT_DECODE_GRADS(ElemType::kF16)
    LARGEOUT_DECODE_GRADS(ElemType::kE4M3)
    LARGEOUT_DECODE_GRADS(ElemType::kE5M2)
#undef LARGEOUT_DECODE_GRADS
    default:
      for (int j = 0; j < n; ++j) gf[j] = 0.f;  // not a gradient type (the ops reject it first)
  }
  // The new values first (each from the unrounded others, as the update rule reads), then
  // each tensor's 8 codes at once (round_group_codes).
  // SGD's nesterov flag, the Kahan buffer's presence and whether there is weight decay pick
  // one of eight copies of the loop (tested per element, their predicated operations were
  // issued on every element).
  float pv[n], bv[n], vv2[n], pold[n], ykahan[n];
  param_values(q.p, pold);
  // AdamW: the moments and the step before weight decay, -step_size m / (sqrt(v) c + eps),
  // with the square roots and the quotients taken for the group at once (sqrt_group,
  // div_group).
  [[maybe_unused]] float adam_step[n];
  if constexpr (K == OptimKind::kAdamW) {
    float sq[n], num[n], den[n];
    LARGEOUT_UNROLL
    for (int j = 0; j < n; ++j) {
      const float g = gf[j];
      bv[j] = op_add(op_mul(h.beta1, decode_code(q.b1[j], t.state)), op_mul(h.one_minus_beta1, g));
      vv2[j] = op_add(op_mul(h.beta2, decode_code(q.b2[j], t.state)), op_mul(h.one_minus_beta2, op_mul(g, g)));
    }
    sqrt_group(vv2, sq);
    LARGEOUT_UNROLL
    for (int j = 0; j < n; ++j) {
      den[j] = op_add(op_mul(sq[j], h.inv_sqrt_bc2), h.eps);
      num[j] = op_mul(-h.step_size, bv[j]);
    }
    div_group(num, den, adam_step);
  }
  auto values = [&](auto nesterov_c, auto comp_c, auto decay_c) {
    [[maybe_unused]] constexpr bool kNesterov = decltype(nesterov_c)::value;
    constexpr bool kComp = decltype(comp_c)::value;
    constexpr bool kDecay = decltype(decay_c)::value;
    LARGEOUT_UNROLL
    for (int j = 0; j < n; ++j) {
      const float p = pold[j];
      float upd;
      if constexpr (K == OptimKind::kSGD) {
        const float g = gf[j];
        float d = kDecay ? op_add(g, op_mul(h.weight_decay, p)) : g;
        if (has_buf1) {
          const float b = h.first ? d
                                  : op_add(op_mul(h.momentum, decode_code(q.b1[j], t.state)),
                                           op_mul(h.one_minus_dampening, d));
          bv[j] = b;
          d = kNesterov ? op_add(d, op_mul(h.momentum, b)) : b;
        }
        upd = op_mul(-h.lr, d);
      } else {
        upd = adam_step[j];
        if (kDecay) upd = op_sub(upd, op_mul(op_mul(h.lr, h.weight_decay), p));
      }
      if (kComp) {
        ykahan[j] = op_sub(upd, decode_code(q.c[j], t.comp));
        pv[j] = op_add(p, ykahan[j]);
      } else {
        pv[j] = op_add(p, upd);
      }
    }
  };
  const bool comp = s.comp != nullptr;
  const bool nesterov = K == OptimKind::kSGD && has_buf1 && h.nesterov;
  auto with_decay = [&](auto nesterov_c, auto comp_c) {
    if (h.weight_decay != 0.f) {
      values(nesterov_c, comp_c, std::true_type{});
    } else {
      values(nesterov_c, comp_c, std::false_type{});
    }
  };
  if (nesterov && comp) {
    with_decay(std::true_type{}, std::true_type{});
  } else if (nesterov) {
    with_decay(std::true_type{}, std::false_type{});
  } else if (comp) {
    with_decay(std::false_type{}, std::true_type{});
  } else {
    with_decay(std::false_type{}, std::false_type{});
  }
  if (K == OptimKind::kAdamW || has_buf1) round_group_codes<S>(bv, bits_1.late(h, v, 1), near, q.b1);
  if (K == OptimKind::kAdamW) round_group_codes<S>(vv2, bits_2.late(h, v, 2), near, q.b2);
  if constexpr (kScaled) {
    float sc[n];
    LARGEOUT_UNROLL
    for (int j = 0; j < n; ++j) sc[j] = scale;
    div_group(pv, sc, pv);
  }
  round_group_codes<P>(pv, pre_p != nullptr ? pre_p->w : bits_p.late(h, v, 0), near, q.p);
  if (comp) {
    float cv[n];
    param_values(q.p, cv);  // the new values
    LARGEOUT_UNROLL
    for (int j = 0; j < n; ++j) cv[j] = op_sub(op_sub(cv[j], pold[j]), ykahan[j]);
    round_group_codes<comp_type(P)>(cv, bits_p.r.w, true, q.c);  // (to nearest: the bits are not read)
  }
}

// Scalar loads and stores around optim_update_codes (the CPU path, and unaligned or
// partial groups on the GPU). All 8 lanes are computed (those past n on zeros, never
// stored), so that the arrays are indexed by constants after unrolling.
template <OptimKind K, ElemType P, ElemType S, bool kScaled = false>
LARGEOUT_HD void optim_update_range(const OptimSlot& s, ElemType G, const OptimHyper& h, int64_t i0, int n) {
  struct {
    ElemType param = P, grad, state = S, comp = comp_type(P);
  } t;
  t.grad = G;
  OptimGroup q;
  LARGEOUT_UNROLL
  for (int j = 0; j < 8; ++j) {
    const bool in = j < n;
    q.p[j] = in ? load_code(s.param, t.param, i0 + j) : 0u;
    q.g[j] = in ? load_code(s.grad, t.grad, i0 + j) : 0u;
    q.b1[j] = in && s.buf1 ? load_code(s.buf1, t.state, i0 + j) : 0u;
    q.b2[j] = in && s.buf2 ? load_code(s.buf2, t.state, i0 + j) : 0u;
    q.c[j] = in && s.comp ? load_code(s.comp, t.comp, i0 + j) : 0u;
  }
  optim_update_codes<K, P, S, kScaled>(q, s, G, h, i0);
  LARGEOUT_UNROLL
  for (int j = 0; j < 8; ++j) {
    if (j >= n) break;
    store_code(s.param, t.param, i0 + j, q.p[j]);
    if (s.buf1) store_code(s.buf1, t.state, i0 + j, q.b1[j]);
    if (s.buf2) store_code(s.buf2, t.state, i0 + j, q.b2[j]);
    if (s.comp) store_code(s.comp, t.comp, i0 + j, q.c[j]);
  }
}

// Calls f.template operator()<K, P, S>() for the launch's kind and types; false when
// the combination is not one the optimizers use (S = comp_type(P) for SGD; S in f32,
// bf16, f16 for AdamW).
template <class F>
bool dispatch_optim(OptimKind k, ElemType p, ElemType s, F&& f) {
#define LARGEOUT_OPT_P(KIND, PT, ST)                                         \
  if (p == PT && s == ST) {                                                 \
    f.template operator()<KIND, PT, ST>();                                  \
    return true;                                                            \
  }
  constexpr ElemType F32 = ElemType::kF32, BF = ElemType::kBF16, H = ElemType::kF16, E4 = ElemType::kE4M3,
                     E5 = ElemType::kE5M2;
  if (k == OptimKind::kSGD) {
    LARGEOUT_OPT_P(OptimKind::kSGD, F32, F32)
    LARGEOUT_OPT_P(OptimKind::kSGD, BF, BF)
    LARGEOUT_OPT_P(OptimKind::kSGD, H, H)
    LARGEOUT_OPT_P(OptimKind::kSGD, E4, BF)
    LARGEOUT_OPT_P(OptimKind::kSGD, E5, BF)
  } else {
    LARGEOUT_OPT_P(OptimKind::kAdamW, F32, F32)
    LARGEOUT_OPT_P(OptimKind::kAdamW, F32, BF)
    LARGEOUT_OPT_P(OptimKind::kAdamW, F32, H)
    LARGEOUT_OPT_P(OptimKind::kAdamW, BF, F32)
    LARGEOUT_OPT_P(OptimKind::kAdamW, BF, BF)
    LARGEOUT_OPT_P(OptimKind::kAdamW, BF, H)
    LARGEOUT_OPT_P(OptimKind::kAdamW, H, F32)
    LARGEOUT_OPT_P(OptimKind::kAdamW, H, BF)
    LARGEOUT_OPT_P(OptimKind::kAdamW, H, H)
    LARGEOUT_OPT_P(OptimKind::kAdamW, E4, F32)
    LARGEOUT_OPT_P(OptimKind::kAdamW, E4, BF)
    LARGEOUT_OPT_P(OptimKind::kAdamW, E4, H)
    LARGEOUT_OPT_P(OptimKind::kAdamW, E5, F32)
    LARGEOUT_OPT_P(OptimKind::kAdamW, E5, BF)
    LARGEOUT_OPT_P(OptimKind::kAdamW, E5, H)
  }
#undef LARGEOUT_OPT_P
  return false;
}

// Whether a parameter dtype may carry a row scale (fp8 only).
constexpr bool scalable(ElemType p) { return p == ElemType::kE4M3 || p == ElemType::kE5M2; }

namespace cpu {
// group_prefix: num_slots + 1 entries, the groups of 8 before each slot (then the total), as
// the CUDA launcher takes it.
void optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, const OptimTypes& types,
                const OptimHyper& hyper, bool scaled, const ParallelFor& pf);
}  // namespace cpu

}  // namespace largeout
