// CUDA launcher of the fused optimizer step (no torch headers).
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/optim_step.h"

namespace largeout::cuda {

// slots[num_slots] and group_prefix[num_slots + 1] (groups of 8 elements before each
// slot; group_prefix[num_slots] = total) live in device memory.
cudaError_t optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                       const OptimTypes& types, const OptimHyper& hyper, cudaStream_t stream);

}  // namespace largeout::cuda
