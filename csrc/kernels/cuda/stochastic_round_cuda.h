// CUDA launcher of stochastic rounding (no torch headers).
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/stochastic_round.h"

namespace largeout::cuda {

// out (the format's bits, 1 or 2 bytes per element) = SR(x) for n elements.
cudaError_t stochastic_round(SrFormat f, const float* x, void* out, int64_t n, uint64_t seed, uint64_t offset,
                             cudaStream_t stream);

}  // namespace largeout::cuda
