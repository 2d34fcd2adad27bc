// CUDA launchers of the group-shared fixed fan-in layer (no torch headers).
// Launchers never allocate: dx and dW take workspaces sized by their plans.
// Every launcher returns the launch status (cudaGetLastError after each launch).
//
// Two families of kernels: generic ones (sm_80+, every shape and dtype) and Hopper ones
// (sm_90a: wgmma, TMA; bf16/fp16, fan-in a multiple of 64, G >= 32 for the backward
// passes). A launcher takes the Hopper kernel when the device is sm_90, the binary has
// it and the problem is covered, unless the policy says "generic".
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/group_sparse.h"

namespace largeout::cuda {

// Compiled group sizes (G) and the largest fan-in (K) the CUDA kernels take.
bool group_size_supported(int64_t group_size);
constexpr int64_t kMaxFanIn = 4096;

struct DeviceInfo {
  int sms = 0;
  int smem_optin = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int cc_major = 0;
  int cc_minor = 0;
};
// The current device's properties (queried once per device).
cudaError_t current_device_info(DeviceInfo* out);

enum class KernelPolicy : int { kAuto = 0, kGeneric = 1 };
void set_kernel_policy(KernelPolicy policy);
KernelPolicy kernel_policy();

enum class Pass : int { kForward = 0, kInput = 1, kWeight = 2 };
// kSm90Fp8: the Hopper kernels for fp8 weights (group_sparse_fwd_fp8, group_sparse_dx_fp8).
enum class Path : int { kGeneric = 0, kSm90 = 1, kSm90Fp8 = 2 };
// The kernels a launcher would use for this problem on this device (dtype and shape
// only; the launchers also need 16-byte aligned pointers for the Hopper kernels).
Path choose_path(Pass pass, DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
// Launches per (pass, path) since the process started (for tests and benchmarks).
int64_t launch_count(Pass pass, Path path);
void count_launch(Pass pass, Path path);  // (the launchers' side of launch_count)
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
// Whether the pass (input or weight) reads dY by TMA on this device for this shape, with row
// stride s.dy_ld(): a multiple of 8, so that dY may be a row-padded view (bench/NOTES.md), or
// not, through row classes.
bool dy_tma_supported(Pass pass, DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);

cudaError_t group_sparse_fwd(DType dtype, const GroupSparseShape& s, const void* x, const void* weight,
                             const int32_t* indices, const void* bias, void* y, cudaStream_t stream);

// dweight [L, K] and dbias [L] (both in the input dtype). The Hopper kernel needs a
// workspace (x transposed).
struct DwPlan {
  Path path = Path::kGeneric;
  int64_t workspace_bytes = 0;
};
DwPlan group_sparse_dw_plan(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
cudaError_t group_sparse_dw(DType dtype, const GroupSparseShape& s, const DwPlan& plan, const void* dy,
                            const void* x, const int32_t* indices, void* dweight, void* dbias, void* workspace,
                            cudaStream_t stream);

// dx is deterministic: each CTA owns (a batch tile, a range of groups) and accumulates
// its rows of dx, in shared memory when [rows_per_cta, H] fits there, otherwise in its
// own slice of the workspace; a second kernel sums the slices in a fixed order.
struct DxPlan {
  Path path = Path::kGeneric;
  int64_t num_splits = 1;         // group ranges per batch tile
  int64_t rows_per_launch = 0;    // batch rows handled by one pass (grid-size limit)
  int64_t workspace_bytes = 0;    // fp32 (fp64 for fp64 inputs) [num_splits, rows_per_launch, H]
  int rows_per_cta = 64;          // batch tile: 64, 32 or 16 rows (generic); 32 (Hopper)
  bool smem_accumulator = false;  // accumulate in shared memory (else in the workspace)
  int64_t smem_bytes = 0;         // dynamic shared memory of the accumulating kernel (generic)
};
// force_rows (benchmarks, generic kernels only): 0 picks the variant; 16, 32 or 64 asks
// for that shared-memory tile (if it fits); -1 asks for the workspace accumulator.
DxPlan group_sparse_dx_plan(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev, int force_rows = 0);
cudaError_t group_sparse_dx(DType dtype, const GroupSparseShape& s, const DxPlan& plan, const void* dy,
                            const void* weight, const int32_t* indices, void* dx, void* workspace,
                            cudaStream_t stream);

// fp8 weights (largeout.nn's fp8 layers): codes e4m3fn where e4m3, else e5m2, times
// row_scale[l] where row_scale is not null, with bf16 x, dY and results. Hopper kernels
// upcast the codes inside (to the values of the fp8_to_bf16 op, so the results equal the
// bf16 kernels' on the upcast weight): the forward, and dx where the bf16 plan runs v3 or
// v2 (dY rows a multiple of 8 elements). fp8_kernels_apply: whether the pass (forward or
// input) has one for this shape on this device under the current policy.
bool fp8_kernels_apply(Pass pass, const GroupSparseShape& s, const DeviceInfo& dev);
cudaError_t group_sparse_fwd_fp8(bool e4m3, const GroupSparseShape& s, const void* x, const void* weight,
                                 const float* row_scale, const int32_t* indices, const void* bias, void* y,
                                 cudaStream_t stream);
// plan: group_sparse_dx_plan(DType::kBFloat16, s, dev) (its splits and workspace).
cudaError_t group_sparse_dx_fp8(bool e4m3, const GroupSparseShape& s, const DxPlan& plan, const void* dy,
                                const void* weight, const float* row_scale, const int32_t* indices, void* dx,
                                void* workspace, cudaStream_t stream);

}  // namespace largeout::cuda
