// The fused optimizer step with 4 group(s) per thread batch, launch bounds (256, 2).
#include "kernels/cuda/optim_step_kernel.cuh"

namespace largeout::cuda::optim_detail {
template cudaError_t launch<4, 2>(const OptimSlot*, const int64_t*, int, int64_t, const OptimTypes&,
                                     const OptimHyper&, int64_t, cudaStream_t);
}  // namespace largeout::cuda::optim_detail
