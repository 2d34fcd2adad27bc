// CUDA launcher of stochastic rounding (no torch headers).
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/optim_step.h"
#include "kernels/stochastic_round.h"

namespace largeout::cuda {

// out (the format's bits, 1 or 2 bytes per element) = SR(x) for n elements.
cudaError_t stochastic_round(SrFormat f, const float* x, void* out, int64_t n, uint64_t seed, uint64_t offset,
                             cudaStream_t stream);

// out (bf16 bits) = in (fp8 codes, e4m3fn or e5m2), exactly, for n elements; with
// row_scale (not null), times row_scale[i / cols] (fp8_to_bf16_bits_scaled).
cudaError_t fp8_to_bf16(bool e4m3fn, const uint8_t* in, uint16_t* out, int64_t n, const float* row_scale,
                        int64_t cols, cudaStream_t stream);

// e4m3 quantization of x [rows, cols] (element type t: f32, bf16 or f16) as the fp8 layer's
// forward does it: scale = amax(|x|) / 448 (an fp32 division; 1 where amax is 0 or NaN),
// over the whole input (rowwise false: scale[0]; scale[1] is scratch, so 2 floats) or per
// row (scale[r]), then q = e4m3(x / scale) rounded to nearest-even.
cudaError_t fp8_quantize(ElemType t, const void* x, int64_t rows, int64_t cols, bool rowwise, uint8_t* q,
                         float* scale, cudaStream_t stream);

}  // namespace largeout::cuda
