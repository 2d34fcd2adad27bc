// largeout_bench_group_sparse: times the group-sparse forward, dx and dW kernels.
//
//   largeout_bench_group_sparse [--B 512] [--H 768] [--K 128] [--G 32] [--L 670208]
//                               [--dtype bf16|fp16|fp32] [--warmup 10] [--iters 50] [--warmup-ms 0]
//                               [--dx-rows 0|16|32|64|-1]   (generic dx variant; 0 = the library's choice)
//                               [--kernels auto|generic]    (auto: Hopper kernels where they apply)
//                               [--index-order sorted|banked|balanced]
//
// --index-order (random_group_indices' orders): sorted, each group's K distinct inputs
// ascending (the default); banked, the same sets dealt out by residue mod 8 so that runs of 8
// slots hold distinct residues where the set allows (each run rotated by one more slot);
// balanced, K / 8 inputs drawn from each residue class (H a multiple of 8), slot 8 q + i
// holding residue (i + q) mod 8.
//
// B, K, G and L take comma lists; every combination is timed. CUDA events around
// each launch, median over --iters runs after --warmup runs (and then further runs for about
// --warmup-ms milliseconds, so that the clocks settle to each kernel), inputs drawn at random
// (never zeros). One JSON object on stdout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "kernels/cuda/group_sparse_cuda.h"

namespace {

using largeout::DType;
using largeout::GroupSparseShape;
using largeout::bench::median_ms;

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  std::string str(s);
  size_t pos = 0;
  while (pos <= str.size()) {
    size_t end = str.find(',', pos);
    if (end == std::string::npos) end = str.size();
    if (end > pos) v.push_back(std::stoll(str.substr(pos, end - pos)));
    pos = end + 1;
  }
  return v;
}

__device__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return uint32_t(x);
}

template <class T>
__global__ void fill_uniform(T* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float u = (hash32(seed * 0x9e3779b97f4a7c15ULL + i) >> 8) * (1.0f / 16777216.0f);  // [0, 1)
    p[i] = T((2.0f * u - 1.0f) * scale);
  }
}

template <class T>
void fill(void* p, int64_t n, uint64_t seed, float scale) {
  fill_uniform<T><<<1024, 256>>>(static_cast<T*>(p), n, seed, scale);
  CHECK_CUDA(cudaGetLastError());
}

void fill_dtype(DType dt, void* p, int64_t n, uint64_t seed, float scale) {
  switch (dt) {
    case DType::kBFloat16: return fill<__nv_bfloat16>(p, n, seed, scale);
    case DType::kFloat16: return fill<__half>(p, n, seed, scale);
    case DType::kFloat32: return fill<float>(p, n, seed, scale);
    case DType::kFloat64: return fill<double>(p, n, seed, scale);
  }
}

// K distinct inputs of [0, H) for each of ng groups, in the order `order` (see the top).
std::vector<int32_t> group_indices(int64_t ng, int64_t H, int64_t K, const std::string& order, std::mt19937_64& rng) {
  std::vector<int32_t> out(ng * K), perm(H), tmp(K);
  std::iota(perm.begin(), perm.end(), 0);
  const int64_t per = K / 8, cls = H / 8;
  for (int64_t g = 0; g < ng; ++g) {
    int32_t* row = out.data() + g * K;
    if (order == "balanced") {  // per residue r: K / 8 of the H / 8 inputs 8 m + r, ascending, the q-th in slot
      // 8 q + i with (i + q) mod 8 = r
      for (int r = 0; r < 8; ++r) {
        for (int64_t k = 0; k < per; ++k) std::swap(perm[k], perm[k + rng() % (cls - k)]);
        std::copy(perm.begin(), perm.begin() + per, tmp.begin());
        std::sort(tmp.begin(), tmp.begin() + per);
        for (int64_t q = 0; q < per; ++q) row[8 * q + ((r - q) & 7)] = 8 * tmp[q] + r;
      }
      continue;
    }
    for (int64_t k = 0; k < K; ++k) std::swap(perm[k], perm[k + rng() % (H - k)]);
    std::copy(perm.begin(), perm.begin() + K, row);
    std::sort(row, row + K);
    if (order == "banked") {  // by (residue, input), then slot 8 q + i takes element q + (K / 8) ((i + q) mod 8)
      std::copy(row, row + K, tmp.begin());
      std::stable_sort(tmp.begin(), tmp.end(), [](int32_t a, int32_t b) { return a % 8 < b % 8; });
      for (int64_t q = 0; q < per; ++q)
        for (int i = 0; i < 8; ++i) row[8 * q + i] = tmp[q + per * ((i + q) & 7)];
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> Bs{512}, Ks{128}, Gs{32}, Ls{670208};
  int64_t H = 768;
  int warmup = 10, iters = 50, dx_rows = 0;
  double warmup_ms = 0;
  std::string dtype_name = "bf16", kernels = "auto", index_order = "sorted";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) { std::fprintf(stderr, "missing value for %s\n", a.c_str()); return 2; }
    const char* v = argv[++i];
    if (a == "--B") Bs = parse_list(v);
    else if (a == "--K") Ks = parse_list(v);
    else if (a == "--G") Gs = parse_list(v);
    else if (a == "--L") Ls = parse_list(v);
    else if (a == "--H") H = std::stoll(v);
    else if (a == "--warmup") warmup = std::atoi(v);
    else if (a == "--iters") iters = std::atoi(v);
    else if (a == "--warmup-ms") warmup_ms = std::atof(v);
    else if (a == "--dtype") dtype_name = v;
    else if (a == "--dx-rows") dx_rows = std::atoi(v);
    else if (a == "--kernels") kernels = v;
    else if (a == "--index-order") index_order = v;
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  DType dt;
  size_t esize;
  if (dtype_name == "bf16") { dt = DType::kBFloat16; esize = 2; }
  else if (dtype_name == "fp16") { dt = DType::kFloat16; esize = 2; }
  else if (dtype_name == "fp32") { dt = DType::kFloat32; esize = 4; }
  else { std::fprintf(stderr, "--dtype must be bf16, fp16 or fp32; got %s\n", dtype_name.c_str()); return 2; }
  if (iters < 50) { std::fprintf(stderr, "--iters must be at least 50; got %d\n", iters); return 2; }
  if (!(warmup_ms >= 0 && warmup_ms <= 10000)) {
    std::fprintf(stderr, "--warmup-ms must be in [0, 10000]; got %g\n", warmup_ms);
    return 2;
  }
  if (kernels != "auto" && kernels != "generic") {
    std::fprintf(stderr, "--kernels must be auto or generic; got %s\n", kernels.c_str());
    return 2;
  }
  if (index_order != "sorted" && index_order != "banked" && index_order != "balanced") {
    std::fprintf(stderr, "--index-order must be sorted, banked or balanced; got %s\n", index_order.c_str());
    return 2;
  }
  if (index_order == "balanced" && H % 8) {
    std::fprintf(stderr, "--index-order balanced needs --H to be a multiple of 8; got %lld\n", (long long)H);
    return 2;
  }
  largeout::cuda::set_kernel_policy(kernels == "auto" ? largeout::cuda::KernelPolicy::kAuto
                                                      : largeout::cuda::KernelPolicy::kGeneric);
  largeout::cuda::DeviceInfo info;
  CHECK_CUDA(largeout::cuda::current_device_info(&info));

  int dev = 0;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  int runtime = 0, driver = 0;
  CHECK_CUDA(cudaRuntimeGetVersion(&runtime));
  CHECK_CUDA(cudaDriverGetVersion(&driver));

  std::printf("{\"gpu\": \"%s\", \"sms\": %d, \"cuda_runtime\": %d, \"cuda_driver\": %d, \"dtype\": \"%s\", "
              "\"H\": %lld, \"warmup\": %d, \"warmup_ms\": %g, \"iters\": %d, \"statistic\": \"median\", "
              "\"kernels\": \"%s\", \"index_order\": \"%s\", \"results\": [",
              prop.name, prop.multiProcessorCount, runtime, driver, dtype_name.c_str(), (long long)H, warmup, warmup_ms,
              iters, kernels.c_str(), index_order.c_str());
  bool first = true;
  std::mt19937_64 rng(1234);
  for (int64_t B : Bs) for (int64_t K : Ks) for (int64_t G : Gs) for (int64_t L : Ls) {
    if (!largeout::cuda::group_size_supported(G) || K % 8 || K > H || K > largeout::cuda::kMaxFanIn) {
      std::fprintf(stderr, "skipping unsupported B=%lld K=%lld G=%lld\n", (long long)B, (long long)K, (long long)G);
      continue;
    }
    GroupSparseShape s;
    s.batch = B; s.in_features = H; s.out_features = L; s.fan_in = K; s.group_size = G;
    const int64_t ng = s.num_groups();
    const std::vector<int32_t> hidx = group_indices(ng, H, K, index_order, rng);
    const largeout::cuda::DxPlan plan = largeout::cuda::group_sparse_dx_plan(dt, s, info, dx_rows);
    const largeout::cuda::DwPlan dw_plan = largeout::cuda::group_sparse_dw_plan(dt, s, info);
    const bool fwd_sm90 =
        largeout::cuda::choose_path(largeout::cuda::Pass::kForward, dt, s, info) == largeout::cuda::Path::kSm90;
    void *x, *w, *bias, *y, *dy, *dx, *dw, *db, *ws, *dw_ws;
    int32_t* idx;
    CHECK_CUDA(cudaMalloc(&x, B * H * esize));
    CHECK_CUDA(cudaMalloc(&w, L * K * esize));
    CHECK_CUDA(cudaMalloc(&bias, L * esize));
    CHECK_CUDA(cudaMalloc(&y, B * L * esize));
    CHECK_CUDA(cudaMalloc(&dy, B * L * esize));
    CHECK_CUDA(cudaMalloc(&dx, B * H * esize));
    CHECK_CUDA(cudaMalloc(&dw, L * K * esize));
    CHECK_CUDA(cudaMalloc(&db, L * esize));
    CHECK_CUDA(cudaMalloc(&ws, std::max<int64_t>(plan.workspace_bytes, 16)));
    CHECK_CUDA(cudaMalloc(&dw_ws, std::max<int64_t>(dw_plan.workspace_bytes, 16)));
    CHECK_CUDA(cudaMalloc(&idx, ng * K * sizeof(int32_t)));
    CHECK_CUDA(cudaMemcpy(idx, hidx.data(), ng * K * sizeof(int32_t), cudaMemcpyHostToDevice));
    fill_dtype(dt, x, B * H, 1, 1.0f);
    fill_dtype(dt, w, L * K, 2, 1.0f / std::sqrt(float(K)));
    fill_dtype(dt, bias, L, 3, 0.1f);
    fill_dtype(dt, dy, B * L, 4, 1.0f);
    CHECK_CUDA(cudaDeviceSynchronize());

    const double t_fwd = median_ms([&] { return largeout::cuda::group_sparse_fwd(dt, s, x, w, idx, bias, y, 0); },
                                   warmup, iters, warmup_ms);
    const double t_dx = median_ms(
        [&] { return largeout::cuda::group_sparse_dx(dt, s, plan, dy, w, idx, dx, ws, 0); }, warmup, iters, warmup_ms);
    const double t_dw = median_ms(
        [&] { return largeout::cuda::group_sparse_dw(dt, s, dw_plan, dy, x, idx, dw, db, dw_ws, 0); }, warmup, iters,
        warmup_ms);
    const double flops = 2.0 * double(B) * double(L) * double(K);
    const int64_t bytes_alloc = (2 * B * H + 2 * L * K + 2 * L + 2 * B * L) * int64_t(esize) + plan.workspace_bytes +
                                dw_plan.workspace_bytes + ng * K * int64_t(sizeof(int32_t));
    auto path_name = [](bool sm90) { return sm90 ? "sm90" : "generic"; };
    // whether dx / dW read this contiguous dY by TMA (at odd L: through row classes), else v1
    auto by_tma = [&](largeout::cuda::Pass p) {
      return largeout::cuda::dy_tma_supported(p, dt, s, info) ? "true" : "false";
    };
    std::printf("%s\n  {\"B\": %lld, \"H\": %lld, \"L\": %lld, \"K\": %lld, \"G\": %lld, \"flops\": %.6g, "
                "\"fwd_ms\": %.6f, \"dx_ms\": %.6f, \"dw_ms\": %.6f, "
                "\"fwd_tflops\": %.3f, \"dx_tflops\": %.3f, \"dw_tflops\": %.3f, "
                "\"dx_splits\": %lld, \"dx_rows_per_cta\": %d, \"dx_smem_accumulator\": %s, "
                "\"dx_workspace_bytes\": %lld, \"device_bytes\": %lld, "
                "\"fwd_path\": \"%s\", \"dx_path\": \"%s\", \"dw_path\": \"%s\", "
                "\"dx_dy_by_tma\": %s, \"dw_dy_by_tma\": %s}",
                first ? "" : ",", (long long)B, (long long)H, (long long)L, (long long)K, (long long)G, flops, t_fwd,
                t_dx, t_dw, flops / t_fwd * 1e-9, flops / t_dx * 1e-9, flops / t_dw * 1e-9,
                (long long)plan.num_splits, plan.rows_per_cta, plan.smem_accumulator ? "true" : "false",
                (long long)plan.workspace_bytes, (long long)bytes_alloc, path_name(fwd_sm90),
                path_name(plan.path == largeout::cuda::Path::kSm90),
                path_name(dw_plan.path == largeout::cuda::Path::kSm90), by_tma(largeout::cuda::Pass::kInput),
                by_tma(largeout::cuda::Pass::kWeight));
    std::fflush(stdout);
    first = false;
    for (void* p : {x, w, bias, y, dy, dx, dw, db, ws, dw_ws}) CHECK_CUDA(cudaFree(p));
    CHECK_CUDA(cudaFree(idx));
  }
  std::printf("\n]}\n");
  return 0;
}
