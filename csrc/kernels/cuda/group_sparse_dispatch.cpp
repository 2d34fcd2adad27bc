// Kernel choice of the CUDA launchers: device properties, the policy, launch counters.
#include <atomic>
#include <mutex>
#include <vector>

#include "kernels/cuda/group_sparse_cuda.h"
#include "kernels/cuda/sm90/group_sparse_sm90.h"

namespace largeout::cuda {
namespace {

std::atomic<int> g_policy{int(KernelPolicy::kAuto)};
std::atomic<int64_t> g_counts[3][3];

}  // namespace

cudaError_t current_device_info(DeviceInfo* out) {
  static std::mutex mu;
  static std::vector<DeviceInfo> cache;
  static std::vector<bool> known;
  int dev = 0;
  if (cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(mu);
  if (size_t(dev) >= cache.size()) {
    cache.resize(dev + 1);
    known.resize(dev + 1, false);
  }
  if (!known[dev]) {
    DeviceInfo d;
    const std::pair<cudaDeviceAttr, int*> attrs[] = {
        {cudaDevAttrMultiProcessorCount, &d.sms},
        {cudaDevAttrMaxSharedMemoryPerBlockOptin, &d.smem_optin},
        {cudaDevAttrComputeCapabilityMajor, &d.cc_major},
        {cudaDevAttrComputeCapabilityMinor, &d.cc_minor},
    };
    for (const auto& [attr, dst] : attrs)
      if (cudaError_t e = cudaDeviceGetAttribute(dst, attr, dev); e != cudaSuccess) return e;
    cache[dev] = d;
    known[dev] = true;
  }
  *out = cache[dev];
  return cudaSuccess;
}

void set_kernel_policy(KernelPolicy policy) { g_policy.store(int(policy)); }
KernelPolicy kernel_policy() { return KernelPolicy(g_policy.load()); }

Path choose_path(Pass pass, DType dtype, const GroupSparseShape& s, const DeviceInfo& dev) {
  if (kernel_policy() == KernelPolicy::kGeneric) return Path::kGeneric;
  bool ok = false;
  switch (pass) {
    case Pass::kForward: ok = sm90::fwd_supported(dtype, s, dev); break;
    case Pass::kInput: ok = sm90::dx_supported(dtype, s, dev); break;
    case Pass::kWeight: ok = sm90::dw_supported(dtype, s, dev); break;
  }
  return ok ? Path::kSm90 : Path::kGeneric;
}

bool dy_tma_supported(Pass pass, DType dtype, const GroupSparseShape& s, const DeviceInfo& dev) {
  if (choose_path(pass, dtype, s, dev) != Path::kSm90) return false;
  if (pass == Pass::kInput) return sm90::dx_tma_supported(dtype, s, dev);
  return pass == Pass::kWeight && sm90::dw_tma_supported(dtype, s, dev);
}

bool fp8_kernels_apply(Pass pass, const GroupSparseShape& s, const DeviceInfo& dev) {
  if (kernel_policy() == KernelPolicy::kGeneric) return false;
  if (pass == Pass::kForward) return sm90::fwd_fp8_supported(s, dev);
  return pass == Pass::kInput && sm90::dx_fp8_supported(s, dev);
}

cudaError_t group_sparse_fwd_fp8(bool e4m3, const GroupSparseShape& s, const void* x, const void* weight,
                                 const float* row_scale, const int32_t* indices, const void* bias, void* y,
                                 cudaStream_t stream) {
  if (!aligned16(x) || !aligned16(weight) || !aligned16(indices)) return cudaErrorMisalignedAddress;
  DeviceInfo dev;
  if (cudaError_t e = current_device_info(&dev); e != cudaSuccess) return e;
  if (!fp8_kernels_apply(Pass::kForward, s, dev)) return cudaErrorInvalidValue;
  count_launch(Pass::kForward, Path::kSm90Fp8);
  return sm90::fwd_fp8(e4m3, s, dev, x, weight, row_scale, indices, bias, y, stream);
}

cudaError_t group_sparse_dx_fp8(bool e4m3, const GroupSparseShape& s, const DxPlan& plan, const void* dy,
                                const void* weight, const float* row_scale, const int32_t* indices, void* dx,
                                void* workspace, cudaStream_t stream) {
  if (!aligned16(dy) || !aligned16(weight) || !aligned16(indices) || !aligned16(workspace))
    return cudaErrorMisalignedAddress;
  DeviceInfo dev;
  if (cudaError_t e = current_device_info(&dev); e != cudaSuccess) return e;
  if (plan.path != Path::kSm90 || !fp8_kernels_apply(Pass::kInput, s, dev)) return cudaErrorInvalidValue;
  count_launch(Pass::kInput, Path::kSm90Fp8);
  return sm90::dx_fp8(e4m3, s, dev, plan.num_splits, dy, weight, row_scale, indices, dx, workspace, stream);
}

void count_launch(Pass pass, Path path) { g_counts[int(pass)][int(path)].fetch_add(1); }
int64_t launch_count(Pass pass, Path path) { return g_counts[int(pass)][int(path)].load(); }

}  // namespace largeout::cuda
