// CUDA launchers of the group-shared fixed fan-in layer (no torch headers).
// Launchers never allocate: dx takes a workspace sized by group_sparse_dx_plan.
// Every launcher returns the launch status (cudaGetLastError after each launch).
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/group_sparse.h"

namespace largeout::cuda {

// Compiled group sizes (G) and the largest fan-in (K) the CUDA kernels take.
bool group_size_supported(int64_t group_size);
constexpr int64_t kMaxFanIn = 4096;

cudaError_t group_sparse_fwd(DType dtype, const GroupSparseShape& s, const void* x, const void* weight,
                             const int32_t* indices, const void* bias, void* y, cudaStream_t stream);

// dweight [L, K] and dbias [L] (dbias may be null), both in the input dtype.
cudaError_t group_sparse_dw(DType dtype, const GroupSparseShape& s, const void* dy, const void* x,
                            const int32_t* indices, void* dweight, void* dbias, cudaStream_t stream);

// dx is deterministic: each CTA owns (a batch tile, a range of groups) and accumulates
// its rows of dx, in shared memory when [rows_per_cta, H] fits there, otherwise in its
// own slice of the workspace; a second kernel sums the slices in a fixed order.
struct DxPlan {
  int64_t num_splits = 1;         // group ranges per batch tile
  int64_t rows_per_launch = 0;    // batch rows handled by one pass (grid-size limit)
  int64_t workspace_bytes = 0;    // fp32 (fp64 for fp64 inputs) [num_splits, rows_per_launch, H]
  int rows_per_cta = 64;          // batch tile: 64, 32 or 16 rows
  bool smem_accumulator = false;  // accumulate in shared memory (else in the workspace)
  int64_t smem_bytes = 0;         // dynamic shared memory of the accumulating kernel
};
// max_smem_per_block: the device's opt-in limit (cudaDevAttrMaxSharedMemoryPerBlockOptin).
// force_rows (benchmarks): 0 picks the variant; 16, 32 or 64 asks for that shared-memory
// tile (if it fits); -1 asks for the workspace accumulator.
DxPlan group_sparse_dx_plan(DType dtype, const GroupSparseShape& s, int num_sms, int max_smem_per_block,
                            int force_rows = 0);
cudaError_t group_sparse_dx(DType dtype, const GroupSparseShape& s, const DxPlan& plan, const void* dy,
                            const void* weight, const int32_t* indices, void* dx, void* workspace,
                            cudaStream_t stream);

}  // namespace largeout::cuda
