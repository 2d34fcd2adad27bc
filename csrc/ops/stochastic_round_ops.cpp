// Torch bindings of stochastic rounding (schema in module.cpp): checks, then the CPU or
// CUDA kernel. The caller (largeout.stochastic_round) draws seed and offset.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "kernels/stochastic_round.h"

#ifdef LARGEOUT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/stochastic_round_cuda.h"
#endif

namespace largeout {
namespace {

constexpr const char* kOp = "largeout.stochastic_round";

SrFormat to_format(at::ScalarType dt) {
  switch (dt) {
    case at::kBFloat16: return SrFormat::kBFloat16;
    case at::kHalf: return SrFormat::kFloat16;
    case at::kFloat8_e4m3fn: return SrFormat::kFloat8E4M3FN;
    case at::kFloat8_e5m2: return SrFormat::kFloat8E5M2;
    default: break;
  }
  TORCH_CHECK_TYPE(false, kOp, ": dtype must be bfloat16, float16, float8_e4m3fn or float8_e5m2; got ", dt);
}

at::Tensor check_input(const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, kOp, ": x must be float32; got ", x.scalar_type());
  return x.contiguous();
}

at::Tensor sr_cpu(const at::Tensor& x_in, at::ScalarType dtype, int64_t seed, int64_t offset) {
  const SrFormat f = to_format(dtype);
  const at::Tensor x = check_input(x_in);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  cpu::stochastic_round(f, x.const_data_ptr<float>(), out.mutable_data_ptr(), x.numel(), uint64_t(seed),
                        uint64_t(offset), [](int64_t b, int64_t e, int64_t grain, const ChunkFn& fn) {
                          at::parallel_for(b, e, grain, [&](int64_t lo, int64_t hi) { fn(lo, hi); });
                        });
  return out;
}

#ifdef LARGEOUT_WITH_CUDA
at::Tensor sr_cuda(const at::Tensor& x_in, at::ScalarType dtype, int64_t seed, int64_t offset) {
  const SrFormat f = to_format(dtype);
  const at::Tensor x = check_input(x_in);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  const cudaError_t e = cuda::stochastic_round(f, x.const_data_ptr<float>(), out.mutable_data_ptr(), x.numel(),
                                               uint64_t(seed), uint64_t(offset), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, kOp, ": CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  return out;
}
#endif

}  // namespace
}  // namespace largeout

TORCH_LIBRARY_IMPL(largeout, CPU, m) { m.impl("stochastic_round", &largeout::sr_cpu); }

#ifdef LARGEOUT_WITH_CUDA
TORCH_LIBRARY_IMPL(largeout, CUDA, m) { m.impl("stochastic_round", &largeout::sr_cuda); }
#endif
