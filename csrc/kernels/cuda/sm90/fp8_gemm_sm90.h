// Hopper (sm_90a) FP8 GEMM of the dense fp8 output layer's forward (no torch headers):
//
//     D[m, n] = bf16(alpha * sum_k A[m, k] * B[n, k] + bias[n])
//
// (per_col_alpha: alpha[n], a float32 vector of N scales, 16-byte aligned)
//
// A e4m3 [M, K] and B e4m3 [N, K], both row-major (K-major, as FP8 wgmma takes them),
// alpha one fp32 value in device memory (the input's quantization scale: no host sync),
// bias bf16 [N] or null, D bf16 [M, ldd] row-major. Built on CUTLASS's sm90 collectives:
// TMA loads (multicast across a cluster of two CTAs along M in configurations 0 and 1: the
// CTAs of one label tile share its weight tile), warp-specialized "pingpong" wgmma with
// Hopper's fast fp8 accumulation (as torch._scaled_mm's use_fast_accum), the scale and bias
// in a TMA-store epilogue, and a persistent tile scheduler that walks M first (each weight
// tile is read from DRAM once while the batch's few M tiles use it). Builds without the 90a target get the stubs.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace largeout::cuda::sm90 {

// Kernel configurations (tile, schedule); bench/bench_fp8.py times each.
constexpr int kFp8GemmConfigs = 3;
const char* fp8_gemm_config_name(int config);

// Problem constraints: M, N, K >= 1; K a multiple of 16 and ldd a multiple of 8 (16-byte
// rows for TMA; N itself any: the store clips at N); ldd >= N; pointers 16-byte aligned.
#ifdef LARGEOUT_WITH_SM90
bool fp8_gemm_supported(int64_t M, int64_t N, int64_t K, int64_t ldd);
size_t fp8_gemm_workspace_bytes(int config, bool per_col_alpha, int64_t M, int64_t N, int64_t K, int sm_count);
cudaError_t fp8_gemm(int config, const void* a, const void* b, const float* alpha, bool per_col_alpha,
                     const void* bias, void* d, int64_t M, int64_t N, int64_t K, int64_t ldd, void* workspace,
                     size_t workspace_bytes, int sm_count, cudaStream_t stream);
#else
inline bool fp8_gemm_supported(int64_t, int64_t, int64_t, int64_t) { return false; }
inline size_t fp8_gemm_workspace_bytes(int, bool, int64_t, int64_t, int64_t, int) { return 0; }
inline cudaError_t fp8_gemm(int, const void*, const void*, const float*, bool, const void*, void*, int64_t, int64_t,
                            int64_t, int64_t, void*, size_t, int, cudaStream_t) {
  return cudaErrorNotSupported;
}
#endif

}  // namespace largeout::cuda::sm90
