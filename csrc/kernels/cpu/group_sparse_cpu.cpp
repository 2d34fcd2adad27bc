// CPU kernels of the group-shared fixed fan-in layer. Accumulation is fp32 for
// 16-bit and fp32 inputs, fp64 for fp64. Every output element is produced by one
// task in a fixed order, so results do not depend on the thread count.
//
// Each kernel's tasks are compiled twice on x86-64: for the baseline ISA (SSE2, what the
// extension is built for) and, in functions marked target("avx2"), with 256-bit vectors; a
// call takes the AVX2 copy where the CPU has AVX2 unless LARGEOUT_CPU_ISA=base. Both copies
// come from one always-inline body and keep its order of operations (no FMA: AVX2 alone
// has none, and the compiler does not reassociate), so they give the same bits.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/scalar.h"
#include "kernels/group_sparse.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LARGEOUT_CPU_AVX2 1
#define LARGEOUT_TARGET_AVX2 __attribute__((target("avx2")))
#define LARGEOUT_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define LARGEOUT_CPU_AVX2 0
#define LARGEOUT_TARGET_AVX2
#define LARGEOUT_ALWAYS_INLINE inline
#endif

namespace largeout::cpu {
namespace {

// Whether a call takes the AVX2 copies: the CPU has AVX2 and LARGEOUT_CPU_ISA is not "base".
bool use_avx2() {
#if LARGEOUT_CPU_AVX2
  static const bool has = __builtin_cpu_supports("avx2");
  const char* e = std::getenv("LARGEOUT_CPU_ISA");
  return has && !(e != nullptr && std::strcmp(e, "base") == 0);
#else
  return false;
#endif
}

constexpr int64_t kRowBlock = 32;  // rows of x handled together in the forward

// n zeroed accumulators starting at a 64-byte boundary inside `buf` (so that 32-byte vector
// accesses never straddle a cache line: with malloc's 16-byte alignment AVX2's dW ran 1.2x
// slower than the baseline build at fp32).
template <class A>
A* aligned_zeros(std::vector<A>& buf, int64_t n) {
  buf.assign(n + 64 / sizeof(A), A(0));
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<A*>((p + 63) & ~uintptr_t(63));
}

// Dot product in a fixed order: 8 interleaved partial sums (which the compiler can keep
// in vector registers), then summed pairwise. Same result for any thread count.
template <class A>
LARGEOUT_ALWAYS_INLINE A dot(const A* a, const A* b, int64_t n) {
  A p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int i = 0; i < 8; ++i) p[i] += a[k + i] * b[k + i];
  for (int i = 0; k < n; ++k, ++i) p[i] += a[k] * b[k];
  return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
}

// The forward's tasks begin .. end - 1. Task = (group, block of rows); rows vary fastest so a
// thread reuses one group's weights.
template <class T>
LARGEOUT_ALWAYS_INLINE void fwd_tasks(const GroupSparseShape& s, const T* x, const T* w, const int32_t* idx,
                                      const T* bias, T* y, int64_t begin, int64_t end) {
  using A = typename Scalar<T>::acc;
  const int64_t B = s.batch, H = s.in_features, L = s.out_features, K = s.fan_in, G = s.group_size;
  const int64_t nrb = (B + kRowBlock - 1) / kRowBlock;
  std::vector<A> wg_buf, xg_buf;
  A* const wg = aligned_zeros(wg_buf, G * K);
  A* const xg = aligned_zeros(xg_buf, K);
  int64_t cached_group = -1;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t g = task / nrb, rb = task % nrb;
    const int64_t l0 = g * G, gv = std::min(G, L - l0);
    const int32_t* gidx = idx + g * K;
    if (g != cached_group) {
      for (int64_t i = 0; i < gv * K; ++i) wg[i] = Scalar<T>::load(w[l0 * K + i]);
      cached_group = g;
    }
    const int64_t b_end = std::min(B, (rb + 1) * kRowBlock);
    for (int64_t b = rb * kRowBlock; b < b_end; ++b) {
      const T* xrow = x + b * H;
      for (int64_t k = 0; k < K; ++k) xg[k] = Scalar<T>::load(xrow[gidx[k]]);
      T* yrow = y + b * L + l0;
      for (int64_t j = 0; j < gv; ++j) {
        A acc = dot(wg + j * K, xg, K);
        if (bias) acc += Scalar<T>::load(bias[l0 + j]);
        yrow[j] = Scalar<T>::store(acc);
      }
    }
  }
}

// dx's rows begin .. end - 1. Task = one row of dx; the row's accumulator holds all H inputs.
template <class T>
LARGEOUT_ALWAYS_INLINE void dx_tasks(const GroupSparseShape& s, const T* dy, const T* w, const int32_t* idx, T* dx,
                                     int64_t begin, int64_t end) {
  using A = typename Scalar<T>::acc;
  const int64_t H = s.in_features, L = s.out_features, K = s.fan_in, G = s.group_size;
  const int64_t ng = s.num_groups();
  std::vector<A> acc(H), part_buf;
  A* const part = aligned_zeros(part_buf, K);
  for (int64_t b = begin; b < end; ++b) {
    std::fill(acc.begin(), acc.end(), A(0));
    const T* dyrow = dy + b * L;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t l0 = g * G, gv = std::min(G, L - l0);
      std::fill(part, part + K, A(0));
      for (int64_t j = 0; j < gv; ++j) {
        const A d = Scalar<T>::load(dyrow[l0 + j]);
        const T* wrow = w + (l0 + j) * K;
        for (int64_t k = 0; k < K; ++k) part[k] += d * Scalar<T>::load(wrow[k]);
      }
      const int32_t* gidx = idx + g * K;
      for (int64_t k = 0; k < K; ++k) acc[gidx[k]] += part[k];
    }
    T* dxrow = dx + b * H;
    for (int64_t h = 0; h < H; ++h) dxrow[h] = Scalar<T>::store(acc[h]);
  }
}

// dW's groups begin .. end - 1. Task = one group; the reduction over the batch runs in order
// inside it.
template <class T>
LARGEOUT_ALWAYS_INLINE void dw_tasks(const GroupSparseShape& s, const T* dy, const T* x, const int32_t* idx, T* dw,
                                     T* dbias, int64_t begin, int64_t end) {
  using A = typename Scalar<T>::acc;
  const int64_t B = s.batch, H = s.in_features, L = s.out_features, K = s.fan_in, G = s.group_size;
  std::vector<A> acc_buf, xg_buf, bacc(G);
  A* const acc = aligned_zeros(acc_buf, G * K);
  A* const xg = aligned_zeros(xg_buf, K);
  for (int64_t g = begin; g < end; ++g) {
    const int64_t l0 = g * G, gv = std::min(G, L - l0);
    const int32_t* gidx = idx + g * K;
    std::fill(acc, acc + G * K, A(0));
    std::fill(bacc.begin(), bacc.end(), A(0));
    for (int64_t b = 0; b < B; ++b) {
      const T* xrow = x + b * H;
      for (int64_t k = 0; k < K; ++k) xg[k] = Scalar<T>::load(xrow[gidx[k]]);
      const T* dyrow = dy + b * L + l0;
      for (int64_t j = 0; j < gv; ++j) {
        const A d = Scalar<T>::load(dyrow[j]);
        bacc[j] += d;
        A* arow = acc + j * K;
        for (int64_t k = 0; k < K; ++k) arow[k] += d * xg[k];
      }
    }
    for (int64_t i = 0; i < gv * K; ++i) dw[l0 * K + i] = Scalar<T>::store(acc[i]);
    if (dbias)
      for (int64_t j = 0; j < gv; ++j) dbias[l0 + j] = Scalar<T>::store(bacc[j]);
  }
}

// A body's tasks compiled for the baseline ISA or, in run_avx2, for AVX2 (the always-inline
// body inlines into each); run_tasks calls the copy `avx2` names.
template <auto Body, class... Args>
void run_base(const Args&... args) {
  Body(args...);
}
template <auto Body, class... Args>
LARGEOUT_TARGET_AVX2 void run_avx2(const Args&... args) {
  Body(args...);
}
template <auto Body, class... Args>
void run_tasks(bool avx2, const Args&... args) {
  if (avx2)
    run_avx2<Body>(args...);
  else
    run_base<Body>(args...);
}

template <class T>
void fwd_impl(const GroupSparseShape& s, const T* x, const T* w, const int32_t* idx, const T* bias,
              T* y, const ParallelFor& pf) {
  const int64_t nrb = (s.batch + kRowBlock - 1) / kRowBlock;
  const bool avx2 = use_avx2();
  pf(0, s.num_groups() * nrb, 1,
     [&](int64_t begin, int64_t end) { run_tasks<&fwd_tasks<T>>(avx2, s, x, w, idx, bias, y, begin, end); });
}

template <class T>
void dx_impl(const GroupSparseShape& s, const T* dy, const T* w, const int32_t* idx, T* dx,
             const ParallelFor& pf) {
  const bool avx2 = use_avx2();
  pf(0, s.batch, 1, [&](int64_t begin, int64_t end) { run_tasks<&dx_tasks<T>>(avx2, s, dy, w, idx, dx, begin, end); });
}

template <class T>
void dw_impl(const GroupSparseShape& s, const T* dy, const T* x, const int32_t* idx, T* dw, T* dbias,
             const ParallelFor& pf) {
  const bool avx2 = use_avx2();
  pf(0, s.num_groups(), 1,
     [&](int64_t begin, int64_t end) { run_tasks<&dw_tasks<T>>(avx2, s, dy, x, idx, dw, dbias, begin, end); });
}

template <template <class> class Fn, class... Args>
void dispatch(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::kFloat32: return Fn<float>::run(args...);
    case DType::kFloat64: return Fn<double>::run(args...);
    case DType::kBFloat16: return Fn<bf16>::run(args...);
    case DType::kFloat16: return Fn<fp16>::run(args...);
  }
  throw std::invalid_argument("largeout: unsupported dtype in CPU kernel");
}

template <class T> struct Fwd {
  static void run(const GroupSparseShape& s, const void* x, const void* w, const int32_t* idx,
                  const void* bias, void* y, const ParallelFor& pf) {
    fwd_impl<T>(s, static_cast<const T*>(x), static_cast<const T*>(w), idx,
                static_cast<const T*>(bias), static_cast<T*>(y), pf);
  }
};
template <class T> struct Dx {
  static void run(const GroupSparseShape& s, const void* dy, const void* w, const int32_t* idx,
                  void* dx, const ParallelFor& pf) {
    dx_impl<T>(s, static_cast<const T*>(dy), static_cast<const T*>(w), idx, static_cast<T*>(dx), pf);
  }
};
template <class T> struct Dw {
  static void run(const GroupSparseShape& s, const void* dy, const void* x, const int32_t* idx,
                  void* dw, void* dbias, const ParallelFor& pf) {
    dw_impl<T>(s, static_cast<const T*>(dy), static_cast<const T*>(x), idx, static_cast<T*>(dw),
               static_cast<T*>(dbias), pf);
  }
};

}  // namespace

void group_sparse_fwd(DType dtype, const GroupSparseShape& s, const void* x, const void* weight,
                      const int32_t* indices, const void* bias, void* y, const ParallelFor& pf) {
  dispatch<Fwd>(dtype, s, x, weight, indices, bias, y, pf);
}

void group_sparse_dx(DType dtype, const GroupSparseShape& s, const void* dy, const void* weight,
                     const int32_t* indices, void* dx, const ParallelFor& pf) {
  dispatch<Dx>(dtype, s, dy, weight, indices, dx, pf);
}

void group_sparse_dw(DType dtype, const GroupSparseShape& s, const void* dy, const void* x,
                     const int32_t* indices, void* dweight, void* dbias, const ParallelFor& pf) {
  dispatch<Dw>(dtype, s, dy, x, indices, dweight, dbias, pf);
}

}  // namespace largeout::cpu
