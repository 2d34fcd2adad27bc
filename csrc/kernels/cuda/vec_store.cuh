// 16- and 8-byte global stores as one vector instruction each, for data written once and
// not read again by the kernel (streaming: L2's evict-first hint, __stcs; weak ordering).
// Assigned through a cast uint4 / uint2 pointer, some of these stores compiled to four (two)
// 4-byte stores: NVVM split them in the optimizer's and pad_columns_sum's kernels (their
// PTX, 2026-12-05). (Not __stwb / __stcg, which compile to STRONG stores on sm_90, nor
// inline PTX, whose volatile asm cost the optimizer's kernels registers and spills.) The
// pointer must address global memory and be aligned to the store's size.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace largeout::cuda {

__device__ __forceinline__ void st_global_v4(void* p, uint4 v) { __stcs(static_cast<uint4*>(p), v); }

__device__ __forceinline__ void st_global_v2(void* p, uint2 v) { __stcs(static_cast<uint2*>(p), v); }

}  // namespace largeout::cuda
