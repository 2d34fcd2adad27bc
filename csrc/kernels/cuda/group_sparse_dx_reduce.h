// Second pass of dx: the sum of the per-split partials, in split order (deterministic).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace largeout::cuda {

// dx[i] = sum_s part[s * n + i], rounded once to T.
template <class A, class T>
__global__ void gsl_dx_reduce_kernel(const A* __restrict__ part, T* __restrict__ dx, int64_t splits, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    A acc = 0;
    for (int64_t s = 0; s < splits; ++s) acc += part[s * n + i];
    dx[i] = static_cast<T>(acc);
  }
}

template <class A, class T>
cudaError_t launch_dx_reduce(const A* part, T* dx, int64_t splits, int64_t n, cudaStream_t stream) {
  const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 8192));
  gsl_dx_reduce_kernel<A, T><<<blocks, 256, 0, stream>>>(part, dx, splits, n);
  return cudaGetLastError();
}

}  // namespace largeout::cuda
