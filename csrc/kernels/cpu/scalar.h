// Host-side 16-bit float storage types and exact conversions (round to nearest
// even), independent of torch. Bit layouts match torch's BFloat16 and Half.
#pragma once
#include <cstdint>
#include <cstring>

namespace largeout::cpu {

struct bf16 { uint16_t bits; };
struct fp16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(bf16 v) { return bits_to_float(uint32_t(v.bits) << 16); }

inline bf16 bf16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round half to even
  return bf16{uint16_t(u >> 16)};
}

inline float to_float(fp16 v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu, mant = v.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return bits_to_float(float_to_bits(mag) | sign);
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline fp16 fp16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) {  // |f| >= 65536, inf or NaN
    return fp16{uint16_t(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  }
  if (u < 0x38800000u) {  // below 2^-14: result is subnormal or zero.
    // Adding 0.5 aligns the value so the float adder rounds at 2^-24 (to nearest even).
    const float r = bits_to_float(u) + 0.5f;
    return fp16{uint16_t(sign | (float_to_bits(r) - 0x3f000000u))};
  }
  // Normal: rebias exponent (127 -> 15) and round the 13 dropped bits half to even.
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd;  // == -(112 << 23) + 0xfff + odd  (mod 2^32)
  return fp16{uint16_t(sign | (u >> 13))};  // overflow into exp 31 gives inf
}

template <class T> struct Scalar;
template <> struct Scalar<float> {
  using acc = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
template <> struct Scalar<double> {
  using acc = double;
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};
template <> struct Scalar<bf16> {
  using acc = float;
  static float load(bf16 v) { return to_float(v); }
  static bf16 store(float v) { return bf16_from_float(v); }
};
template <> struct Scalar<fp16> {
  using acc = float;
  static float load(fp16 v) { return to_float(v); }
  static fp16 store(float v) { return fp16_from_float(v); }
};

}  // namespace largeout::cpu
