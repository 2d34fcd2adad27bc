// Hopper FP8 GEMM of the dense fp8 layer's forward: see fp8_gemm_sm90.h. CUTLASS's
// sm90 collectives (used as a library) instantiated for e4m3 x e4m3 -> bf16 with a scalar
// scale from device memory, or one scale per column (per label: the layer's label scales
// times the input's scale), and a per-column (per-label) bias.
#include "kernels/cuda/sm90/fp8_gemm_sm90.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler_params.h>

#include <limits>
#include <type_traits>

namespace largeout::cuda::sm90 {
namespace {

using namespace cute;

// One configuration: CTA tile (M, N, K), cluster along M, and the kernel schedule;
// kPerCol: alpha is a vector of N scales (else one value).
template <class TileShape, class ClusterShape, class MainloopSchedule, class EpilogueSchedule, bool kPerCol>
struct Fp8Gemm {
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using ElementD = cutlass::bfloat16_t;
  using ElementBias = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;     // [M, K], K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // [K, N] with K contiguous: the [N, K] weight
  using LayoutD = cutlass::layout::RowMajor;     // [M, ldd]
  static constexpr int kAlignAB = 16;            // elements per 16 bytes
  static constexpr int kAlignD = 8;

  using Fusion = std::conditional_t<
      kPerCol,
      cutlass::epilogue::fusion::PerColLinCombPerColBiasEltAct<cutlass::epilogue::thread::Identity, ElementD, float,
                                                               ElementBias, ElementD, float>,
      cutlass::epilogue::fusion::LinCombPerColBias<ElementD, float, ElementBias, ElementD, float>>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD, kAlignD, ElementD, LayoutD, kAlignD,
      EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignAB, ElementB, LayoutB, kAlignAB,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const void* a, const void* b, const float* alpha, const void* bias,
                                            void* d, int64_t M, int64_t N, int64_t K, int64_t ldd, int sm_count) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    // (row stride, 1, batch stride): A [M, K] and B [N, K] packed, D's rows ldd long.
    StrideA sa{};
    StrideB sb{};
    StrideD sd{};
    get<0>(sa) = K;
    get<0>(sb) = K;
    get<0>(sd) = ldd;
    cutlass::KernelHardwareInfo hw;
    hw.device_id = 0;  // (read only to query the SM count when sm_count is not given; it is)
    hw.sm_count = sm_count;
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {int(M), int(N), int(K), 1},
                                  {static_cast<const ElementA*>(a), sa, static_cast<const ElementB*>(b), sb},
                                  {{}, nullptr, sd, static_cast<ElementD*>(d), sd},
                                  hw};
    auto& f = args.epilogue.thread;
    f.alpha_ptr = alpha;
    if constexpr (kPerCol) f.dAlpha = {_0{}, bool(1), 0};  // alpha[n]: a row vector broadcast over M
    f.beta = 0.f;
    f.bias_ptr = static_cast<const ElementBias*>(bias);
    // M first: the batch's few M tiles of one label tile run together, so the weight tile
    // comes from DRAM once and from L2 for the others.
    args.scheduler.raster_order =
        cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90Params::RasterOrderOptions::AlongM;
    args.scheduler.max_swizzle_size = 1;
    return args;
  }

  static size_t workspace(int64_t M, int64_t N, int64_t K, int sm_count) {
    auto args = arguments(nullptr, nullptr, nullptr, nullptr, nullptr, M, N, K, N, sm_count);
    return Gemm::get_workspace_size(args);
  }

  static cudaError_t run(const void* a, const void* b, const float* alpha, const void* bias, void* d, int64_t M,
                         int64_t N, int64_t K, int64_t ldd, void* workspace, size_t workspace_bytes, int sm_count,
                         cudaStream_t stream) {
    auto args = arguments(a, b, alpha, bias, d, M, N, K, ldd, sm_count);
    if (Gemm::get_workspace_size(args) > workspace_bytes) return cudaErrorInvalidValue;
    Gemm gemm;
    // CUTLASS asks the output's row length to be a multiple of its 16-byte alignment; ours
    // need not be: the rows are ldd (a multiple of 8) apart, the TMA store clips at N and the
    // bias and scale loads are predicated on N. So the check runs on N rounded up to 8.
    const auto check = arguments(a, b, alpha, bias, d, M, (N + 7) / 8 * 8, K, ldd, sm_count);
    if (gemm.can_implement(check) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
    if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
    if (gemm.run(stream) != cutlass::Status::kSuccess) {
      const cudaError_t e = cudaGetLastError();
      return e != cudaSuccess ? e : cudaErrorLaunchFailure;
    }
    return cudaGetLastError();
  }
};

using Ping = cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum;
using PingEpi = cutlass::epilogue::TmaWarpSpecialized;

// Measured on an H200 at B=512, H=768, L=2,812,281 (bench/results/fp8_linear_h200.json):
// pingpong (one warpgroup's epilogue under the other's mainloop) with 128-row tiles was the
// fastest; cooperative 128x256, pingpong 64x256, a 4x1 cluster and 256-deep K tiles (whose
// fast accumulation also drifted further from fp32) were slower and are gone. On an H100
// (bench/results/fp8_gemm_configs_s19_h100.json) cooperative 256x128x128 tiles with a 2x1 or
// 1x2 cluster (cuBLAS's tile for the bf16 layer) took 2.61-2.81 ms against 2.32-2.37: gone too.
// Session 20 on an H100: a 1x2 cluster, whose two CTAs share the input tile (multicast; x is
// read again from L2 for every label tile) and take the weight tile from L2, was faster than
// the 2x1 cluster (weight tile multicast) in 7 of 9 passes of bench_fp8_configs.py
// (fp8_gemm_configs{,_b,_c}_s20_h100.json: 2.36-2.47 ms against 2.32-2.98; within 0.06 ms in
// the cool passes, clearly ahead in each run's third, where the clock drops: 2.39-2.47 against
// 2.71-2.98) and equal in bench_fp8.py (2.28 vs 2.27 ms, fp8_linear_s20_h100.json): the
// default now. A 2x2 cluster (2.61-2.87), a 1x4 cluster (2.61-3.23) and 128x128 tiles with a
// 2x1 cluster (2.36-3.02) were not faster and are gone.
template <bool kPerCol>
using Config0 = Fp8Gemm<Shape<_128, _192, _128>, Shape<_1, _2, _1>, Ping, PingEpi, kPerCol>;
template <bool kPerCol>
using Config1 = Fp8Gemm<Shape<_128, _192, _128>, Shape<_2, _1, _1>, Ping, PingEpi, kPerCol>;
template <bool kPerCol>
using Config2 = Fp8Gemm<Shape<_128, _128, _128>, Shape<_1, _1, _1>, Ping, PingEpi, kPerCol>;

template <bool kPerCol, class F>
auto with_config_t(int config, F&& f) {
  switch (config) {
    case 1: return f(Config1<kPerCol>{});
    case 2: return f(Config2<kPerCol>{});
    default: return f(Config0<kPerCol>{});
  }
}

template <class F>
auto with_config(int config, bool per_col, F&& f) {
  return per_col ? with_config_t<true>(config, f) : with_config_t<false>(config, f);
}

}  // namespace

const char* fp8_gemm_config_name(int config) {
  switch (config) {
    case 0: return "pingpong 128x192x128, cluster 1x2";
    case 1: return "pingpong 128x192x128, cluster 2x1";
    case 2: return "pingpong 128x128x128, cluster 1x1";
  }
  return "unknown";
}

bool fp8_gemm_supported(int64_t M, int64_t N, int64_t K, int64_t ldd) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  return M >= 1 && N >= 1 && K >= 16 && K % 16 == 0 && ldd % 8 == 0 && ldd >= N && ldd <= kMax && M <= kMax &&
         N <= kMax && K <= kMax;
}

size_t fp8_gemm_workspace_bytes(int config, bool per_col_alpha, int64_t M, int64_t N, int64_t K, int sm_count) {
  return with_config(config, per_col_alpha, [&](auto c) { return decltype(c)::workspace(M, N, K, sm_count); });
}

cudaError_t fp8_gemm(int config, const void* a, const void* b, const float* alpha, bool per_col_alpha,
                     const void* bias, void* d, int64_t M, int64_t N, int64_t K, int64_t ldd, void* workspace,
                     size_t workspace_bytes, int sm_count, cudaStream_t stream) {
  if (config < 0 || config >= kFp8GemmConfigs || !fp8_gemm_supported(M, N, K, ldd)) return cudaErrorInvalidValue;
  return with_config(config, per_col_alpha, [&](auto c) {
    return decltype(c)::run(a, b, alpha, bias, d, M, N, K, ldd, workspace, workspace_bytes, sm_count, stream);
  });
}

}  // namespace largeout::cuda::sm90
