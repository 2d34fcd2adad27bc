// Torch bindings of stochastic rounding (schema in module.cpp): checks, then the CPU or
// CUDA kernel. The caller (largeout.stochastic_round) draws seed and offset.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "kernels/optim_step.h"
#include "kernels/stochastic_round.h"
#include "ops/checks.h"

#ifdef LARGEOUT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "ops/device_guard.h"

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

// fp8 -> bf16 (exact): the input's codes, decoded by the rule the CUDA kernel shares.
at::Tensor check_fp8(const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat8_e4m3fn || x.scalar_type() == at::kFloat8_e5m2,
                   "largeout.fp8_to_bf16: x must be float8_e4m3fn or float8_e5m2; got ", x.scalar_type());
  return x.contiguous();
}

// row_scale: x 2-D [rows, cols] and the scale float32 [rows] on x's device (contiguous
// copy taken); returns it, or an undefined tensor without one.
at::Tensor check_row_scale(const at::Tensor& x, const std::optional<at::Tensor>& row_scale) {
  if (!row_scale) return at::Tensor();
  TORCH_CHECK(x.dim() == 2, "largeout.fp8_to_bf16: x must be 2-D [rows, cols] with row_scale; got ", x.dim(), "-D");
  return check_row_scale_arg("largeout.fp8_to_bf16", "row_scale", *row_scale, x.size(0), x.device());
}

at::Tensor fp8_to_bf16_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& row_scale) {
  const at::Tensor x = check_fp8(x_in);
  const at::Tensor s = check_row_scale(x, row_scale);
  const bool e4m3 = x.scalar_type() == at::kFloat8_e4m3fn;
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const auto* in = static_cast<const uint8_t*>(x.const_data_ptr());
  auto* o = static_cast<uint16_t*>(out.mutable_data_ptr());
  const float* sp = s.defined() ? s.const_data_ptr<float>() : nullptr;
  const int64_t cols = s.defined() ? x.size(1) : 1;
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t lo, int64_t hi) {
    if (sp) {
      for (int64_t i = lo; i < hi; ++i) o[i] = fp8_to_bf16_bits_scaled(in[i], e4m3, sp[i / cols]);
    } else {
      for (int64_t i = lo; i < hi; ++i) o[i] = fp8_to_bf16_bits(in[i], e4m3);
    }
  });
  return out;
}

#ifdef LARGEOUT_WITH_CUDA
at::Tensor fp8_to_bf16_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& row_scale) {
  const at::Tensor x = check_fp8(x_in);
  const at::Tensor s = check_row_scale(x, row_scale);
  DeviceGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const cudaError_t e = cuda::fp8_to_bf16(x.scalar_type() == at::kFloat8_e4m3fn,
                                          static_cast<const uint8_t*>(x.const_data_ptr()),
                                          static_cast<uint16_t*>(out.mutable_data_ptr()), x.numel(),
                                          s.defined() ? s.const_data_ptr<float>() : nullptr,
                                          s.defined() ? x.size(1) : 1, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "largeout.fp8_to_bf16: CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  return out;
}

at::Tensor sr_cuda(const at::Tensor& x_in, at::ScalarType dtype, int64_t seed, int64_t offset) {
  const SrFormat f = to_format(dtype);
  const at::Tensor x = check_input(x_in);
  DeviceGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  const cudaError_t e = cuda::stochastic_round(f, x.const_data_ptr<float>(), out.mutable_data_ptr(), x.numel(),
                                               uint64_t(seed), uint64_t(offset), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, kOp, ": CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  return out;
}
#endif

}  // namespace
}  // namespace largeout

TORCH_LIBRARY_IMPL(largeout, CPU, m) {
  m.impl("stochastic_round", &largeout::sr_cpu);
  m.impl("fp8_to_bf16", &largeout::fp8_to_bf16_cpu);
}

#ifdef LARGEOUT_WITH_CUDA
TORCH_LIBRARY_IMPL(largeout, CUDA, m) {
  m.impl("stochastic_round", &largeout::sr_cuda);
  m.impl("fp8_to_bf16", &largeout::fp8_to_bf16_cuda);
}
#endif
