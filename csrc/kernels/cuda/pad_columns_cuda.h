// CUDA launcher of the backward's dY preparation (no torch headers): see pad_columns.cu.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace largeout::cuda {

// How many row ranges pad_columns_sum splits M rows into for Lp columns on sms SMs (1: one
// pass; more: partial sums, `partial` must hold splits * L floats).
int64_t pad_columns_sum_splits(int64_t M, int64_t Lp, int sms);

// g: bf16 bits (fp16 where half) [M, L], element (r, c) at g[r * ld + c * cs]. out (may be null): [M, Lp]
// contiguous, Lp a multiple of 8 >= L, = g with zero columns from L on. sums (may be null):
// fp32 [L], the column sums of g (not written when M = 0). partial: scratch for splits > 1.
cudaError_t pad_columns_sum(const uint16_t* g, bool half, int64_t M, int64_t L, int64_t ld, int64_t cs,
                            uint16_t* out, int64_t Lp, float* sums, float* partial, int64_t splits,
                            cudaStream_t stream);

}  // namespace largeout::cuda
