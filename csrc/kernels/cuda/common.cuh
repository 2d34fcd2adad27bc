// Shared pieces of the CUDA kernels: element traits and block-level tile MMAs.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/group_sparse_cuda.h"

namespace largeout::cuda {

constexpr int kThreads = 128;  // 4 warps per CTA in every kernel here

template <class T> struct Elem;
template <> struct Elem<float> {
  using acc = float;
  static constexpr bool kTensorCore = false;
  __device__ static float to_acc(float v) { return v; }
  __device__ static float from_acc(float v) { return v; }
};
template <> struct Elem<double> {
  using acc = double;
  static constexpr bool kTensorCore = false;
  __device__ static double to_acc(double v) { return v; }
  __device__ static double from_acc(double v) { return v; }
};
template <> struct Elem<__half> {
  using acc = float;
  static constexpr bool kTensorCore = true;
  __device__ static float to_acc(__half v) { return __half2float(v); }
  __device__ static __half from_acc(float v) { return __float2half_rn(v); }
};
template <> struct Elem<__nv_bfloat16> {
  using acc = float;
  static constexpr bool kTensorCore = true;
  __device__ static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

template <class T>
__device__ __forceinline__ T zero_elem() { return Elem<T>::from_acc(0); }

// Shared-memory row stride: padding keeps tensor-core loads 32-byte aligned
// (multiples of 16 elements + 8 for 16-bit types) and SIMT reads conflict-free.
template <class T>
constexpr int smem_ld(int cols) { return Elem<T>::kTensorCore ? cols + 8 : cols + 1; }

// Block tile product with tensor cores (WMMA, fp32 accumulators).
// C[M, N] (+)= A[M, Kc] B[Kc, N] where A(m, k) = a[m * a_sm + k * a_sk] and similarly B.
// Each of the 4 warps owns M / 4 / 16 * N / 16 fragments laid out as a grid of rows.
// Row-major operands have stride (ld, 1), column-major ones (1, ld).
template <class T, int M, int N>
struct WmmaTile {
  static_assert(M % 16 == 0 && N % 16 == 0, "tile must be a multiple of 16");
  static constexpr int kWarps = kThreads / 32;
  // Split the 16x16 fragment grid over warps: along M when it has >= 4 rows of fragments.
  static constexpr int kFragM = M / 16, kFragN = N / 16;
  static constexpr int kWarpsM = kFragM >= kWarps ? kWarps : kFragM;
  static constexpr int kWarpsN = kWarps / kWarpsM;
  static_assert(kFragN % kWarpsN == 0 && kFragM % kWarpsM == 0, "fragment grid must split over warps");
  static constexpr int kFM = kFragM / kWarpsM, kFN = kFragN / kWarpsN;
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  Acc acc[kFM][kFN];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
      for (int j = 0; j < kFN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  template <bool ARowMajor, bool BRowMajor>
  __device__ void mma(const T* a, int lda, const T* b, int ldb, int kc) {
    using namespace nvcuda;
    using LA = std::conditional_t<ARowMajor, wmma::row_major, wmma::col_major>;
    using LB = std::conditional_t<BRowMajor, wmma::row_major, wmma::col_major>;
    const int warp = threadIdx.x / 32;
    const int wm = warp % kWarpsM, wn = warp / kWarpsM;
    for (int k = 0; k < kc; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa[kFM];
#pragma unroll
      for (int i = 0; i < kFM; ++i) {
        const int m0 = (wm * kFM + i) * 16;
        wmma::load_matrix_sync(fa[i], ARowMajor ? a + m0 * lda + k : a + k * lda + m0, lda);
      }
#pragma unroll
      for (int j = 0; j < kFN; ++j) {
        const int n0 = (wn * kFN + j) * 16;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
        wmma::load_matrix_sync(fb, BRowMajor ? b + k * ldb + n0 : b + n0 * ldb + k, ldb);
#pragma unroll
        for (int i = 0; i < kFM; ++i) wmma::mma_sync(acc[i][j], fa[i], fb, acc[i][j]);
      }
    }
  }

  // Writes the tile, row-major, into c (fp32, stride ldc).
  __device__ void store(float* c, int ldc) {
    const int warp = threadIdx.x / 32;
    const int wm = warp % kWarpsM, wn = warp / kWarpsM;
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
      for (int j = 0; j < kFN; ++j)
        nvcuda::wmma::store_matrix_sync(c + (wm * kFM + i) * 16 * ldc + (wn * kFN + j) * 16, acc[i][j], ldc,
                                        nvcuda::wmma::mem_row_major);
  }
};

// Block tile product on CUDA cores for fp32 / fp64. Thread t owns column
// n = t % N and rows m = t / N + i * (kThreads / N), i < kRows.
template <class T, int M, int N>
struct SimtTile {
  static_assert(N <= kThreads && kThreads % N == 0, "N must divide the thread count");
  using A = typename Elem<T>::acc;
  static constexpr int kRowStep = kThreads / N;
  static constexpr int kRows = M / kRowStep;
  static_assert(M % kRowStep == 0, "M must split over row groups");
  A acc[kRows];

  __device__ int col() const { return threadIdx.x % N; }
  __device__ int row(int i) const { return threadIdx.x / N + i * kRowStep; }

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < kRows; ++i) acc[i] = 0;
  }

  template <bool ARowMajor, bool BRowMajor>
  __device__ void mma(const T* a, int lda, const T* b, int ldb, int kc) {
    const int n = col();
    for (int k = 0; k < kc; ++k) {
      const A bv = BRowMajor ? b[k * ldb + n] : b[n * ldb + k];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int m = row(i);
        acc[i] += (ARowMajor ? a[m * lda + k] : a[k * lda + m]) * bv;
      }
    }
  }
};

template <class T> struct TypeTag { using type = T; };

// Sets the dynamic shared-memory limit of a kernel when it needs more than 48 KB.
template <class Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t kMaxGridY = 65535;

// Calls fn.template operator()<T, G>() for the runtime dtype and group size.
template <class Fn>
cudaError_t dispatch_dtype_group(DType dtype, int64_t g, Fn&& fn) {
  auto by_group = [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    switch (g) {
      case 16: return fn.template operator()<T, 16>();
      case 32: return fn.template operator()<T, 32>();
      case 64: return fn.template operator()<T, 64>();
      case 128: return fn.template operator()<T, 128>();
      default: return cudaErrorInvalidValue;
    }
  };
  switch (dtype) {
    case DType::kFloat32: return by_group(TypeTag<float>{});
    case DType::kFloat64: return by_group(TypeTag<double>{});
    case DType::kBFloat16: return by_group(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16: return by_group(TypeTag<__half>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace largeout::cuda
