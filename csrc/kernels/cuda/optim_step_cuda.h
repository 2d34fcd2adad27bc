// CUDA launcher of the fused optimizer step (no torch headers).
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/optim_step.h"

namespace largeout::cuda {

// slots[num_slots] and group_prefix[num_slots + 1] (groups of 8 elements before each
// slot; group_prefix[num_slots] = total) live in device memory. Every slot has buf1
// (momentum, exp_avg) iff has_buf1 and a Kahan buffer iff has_comp; AdamW's slots have buf2.
// Every slot has a row scale iff scaled (fp8 parameters only; else cudaErrorInvalidValue).
cudaError_t optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, int64_t total_groups,
                       const OptimTypes& types, const OptimHyper& hyper, bool has_buf1, bool has_comp,
                       bool scaled, cudaStream_t stream);

// Test hook (largeout._sr_rule_mismatches on CUDA tensors): adds to *bad (device memory,
// zeroed by the caller) the number of (x[i], rnd[i]) where the device's group rounding
// (round_group_codes, the optimizers' stores) or its per-element rule differs from the
// specification (sr_round_bits; nearest: sr_round_bits_fast with nearest), for a 16- or
// 8-bit float type t.
cudaError_t sr_rule_mismatches(const float* x, const uint32_t* rnd, int64_t n, ElemType t, unsigned long long* bad,
                               cudaStream_t stream);

// Test hook (largeout._group_sqrt_div on CUDA tensors): sqrt_group(a) and div_group(a, b)
// over consecutive groups of 8 (n a multiple of 8; else cudaErrorInvalidValue).
cudaError_t group_sqrt_div(const float* a, const float* b, int64_t n, float* sqrt_out, float* div_out,
                           cudaStream_t stream);

}  // namespace largeout::cuda
