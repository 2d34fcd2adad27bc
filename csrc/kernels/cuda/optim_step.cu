// CUDA fused optimizer step: one launch for a list of tensors; each thread updates
// groups of 8 consecutive elements with the rule of kernels/optim_step.h (so the bits
// equal the CPU path's), loading and storing whole groups with streaming vector
// accesses when the tensor is 16-byte aligned, several groups' loads in flight at once
// (the kernel: optim_step_kernel.cuh; one translation unit per launch shape).
#include <cstdlib>

#include "kernels/cuda/optim_step_cuda.h"

namespace largeout::cuda {
namespace optim_detail {
template <int U, int MinBlocks>
cudaError_t launch(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                   const OptimTypes& types, const OptimHyper& hyper, int64_t max_blocks, cudaStream_t stream);
}  // namespace optim_detail

cudaError_t optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                       const OptimTypes& types, const OptimHyper& hyper, cudaStream_t stream) {
  if (total_groups == 0 || num_slots == 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  const int64_t cap = int64_t(sms) * 8;
  // Launch shapes under evaluation (bench/bench_optim.py --variants times each;
  // LARGEOUT_OPTIM_VARIANT picks one): groups a thread loads before updating any of
  // them, and the launch bounds' minimum blocks per SM (2: up to 128 registers a
  // thread, 4: up to 64). 0: (1, 2), 1: (1, 4), 2: (2, 2), 3: (4, 2).
  int variant = -1;
  if (const char* env = std::getenv("LARGEOUT_OPTIM_VARIANT")) variant = std::atoi(env);
  if (variant < 0 || variant > 3) variant = elem_bytes(types.param) == 4 ? 0 : 2;
  using namespace optim_detail;
  switch (variant) {
    case 0: return launch<1, 2>(slots, group_prefix, num_slots, total_groups, types, hyper, cap, stream);
    case 1: return launch<1, 4>(slots, group_prefix, num_slots, total_groups, types, hyper, cap, stream);
    case 2: return launch<2, 2>(slots, group_prefix, num_slots, total_groups, types, hyper, cap, stream);
    default: return launch<4, 2>(slots, group_prefix, num_slots, total_groups, types, hyper, cap, stream);
  }
}

}  // namespace largeout::cuda
