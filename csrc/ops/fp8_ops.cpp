// Torch bindings of the fp8 layer's forward (schemas in module.cpp): the input's e4m3
// quantization (CPU and CUDA, the same rule), and the Hopper FP8 GEMM:
//     fp8_gemm(a [M, K] e4m3, b [N, K] e4m3, scale fp32 [1] or [N], bias bf16 [N]?, config) -> bf16 [M, N]
// y = bf16(scale * a @ b^T + bias), scale one value or one per column; any N (when N is not a multiple of 8, y is a
// [M, N] view of a [M, N rounded up to 8] result). CUDA on sm_90 only, in builds with the 90a target;
// anything else is refused with the reason (largeout.nn.fp8 asks fp8_gemm_configs() first).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <string>
#include <vector>

#ifdef LARGEOUT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "ops/device_guard.h"

#include "kernels/cuda/pad_columns_cuda.h"
#include "kernels/cuda/sm90/fp8_gemm_sm90.h"
#include "kernels/cuda/stochastic_round_cuda.h"
#endif
#include "kernels/optim_step.h"

namespace largeout {

// Names of the kernel configurations this build and the current device run (index =
// config); empty without the sm_90a kernels or without an sm_90 device.
std::vector<std::string> fp8_gemm_configs() {
  std::vector<std::string> out;
#if defined(LARGEOUT_WITH_CUDA) && defined(LARGEOUT_WITH_SM90)
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();  // no device: clear the sticky error, report none
    return out;
  }
  if (major == 9 && minor == 0)
    for (int c = 0; c < cuda::sm90::kFp8GemmConfigs; ++c) out.emplace_back(cuda::sm90::fp8_gemm_config_name(c));
#endif
  return out;
}

namespace {

constexpr const char* kOp = "largeout.fp8_gemm";
constexpr const char* kQuantOp = "largeout.fp8_quantize";
constexpr const char* kPadOp = "largeout.pad_columns_sum";

// pad_columns_sum's checks (CPU and CUDA); returns L rounded up to multiple.
int64_t check_pad_columns(const at::Tensor& x, int64_t multiple) {
  TORCH_CHECK(x.dim() == 2, kPadOp, ": x must be 2-D [M, L]; got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, kPadOp,
                   ": x must be bfloat16 or float16; got ", x.scalar_type());
  TORCH_CHECK(multiple > 0 && multiple % 8 == 0 && multiple <= (int64_t(1) << 30), kPadOp,
              ": multiple must be a positive multiple of 8 up to 2^30; got ", multiple);
  return (x.size(1) + multiple - 1) / multiple * multiple;
}

// The reference semantics, on the CPU: ATen's zero padding and fp32 column sum.
std::tuple<at::Tensor, at::Tensor> pad_columns_sum_cpu(const at::Tensor& x, int64_t multiple, bool pad, bool sums) {
  const int64_t Lp = check_pad_columns(x, multiple);
  return {pad ? at::constant_pad_nd(x, {0, Lp - x.size(1)}, 0).contiguous() : at::empty({0, 0}, x.options()),
          sums ? at::sum(x, {0}, false, at::kFloat) : at::empty({0}, x.options().dtype(at::kFloat))};
}

// q = e4m3(x / scale), scale = amax(|x|) / 448 (1 where amax is 0 or NaN) over the input
// or per row: the rule of largeout.nn.fp8.quantize, as one op (two small kernels on CUDA
// instead of six, and no per-op host work).
ElemType quant_input_type(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, kQuantOp, ": x must be 2-D [rows, cols]; got ", x.dim(), "-D");
  switch (x.scalar_type()) {
    case at::kFloat: return ElemType::kF32;
    case at::kBFloat16: return ElemType::kBF16;
    case at::kHalf: return ElemType::kF16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, kQuantOp, ": x must be float32, bfloat16 or float16; got ", x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> fp8_quantize_cpu(const at::Tensor& x_in, bool rowwise) {
  const ElemType t = quant_input_type(x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor q = at::empty({rows, cols}, x.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor scale = at::empty({rowwise ? rows : 1, 1}, x.options().dtype(at::kFloat));
  const void* xp = x.const_data_ptr();
  auto* qp = static_cast<uint8_t*>(q.mutable_data_ptr());
  float* sp = scale.mutable_data_ptr<float>();
  auto scale_of = [&](int64_t b, int64_t e) {  // (the rule: kernels/optim_step.h, shared with CUDA)
    uint32_t m = 0;
    for (int64_t i = b; i < e; ++i) m = std::max(m, abs_bits(xp, t, i));
    return e4m3_quant_scale(m);
  };
  auto codes = [&](int64_t b, int64_t e, float s) {
    for (int64_t i = b; i < e; ++i) qp[i] = e4m3_quant_code(xp, t, i, s);
  };
  if (rowwise) {
    at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        sp[r] = scale_of(r * cols, (r + 1) * cols);
        codes(r * cols, (r + 1) * cols, sp[r]);
      }
    });
  } else {
    sp[0] = scale_of(0, rows * cols);
    at::parallel_for(0, rows * cols, 1 << 14, [&](int64_t lo, int64_t hi) { codes(lo, hi, sp[0]); });
  }
  return {q, scale};
}

at::Tensor fp8_gemm_cpu(const at::Tensor& a, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        int64_t) {
  TORCH_CHECK(false, kOp, ": runs on CUDA sm_90 devices only (FP8 wgmma); got tensors on ", a.device(),
              " (largeout.nn.Linear emulates FP8 elsewhere)");
}

#ifdef LARGEOUT_WITH_CUDA
bool aligned16(const at::Tensor& t) { return (reinterpret_cast<uintptr_t>(t.const_data_ptr()) & 15u) == 0; }

void check_operand(const char* name, const at::Tensor& t, const at::Tensor& a) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat8_e4m3fn, kOp, ": ", name, " must be float8_e4m3fn; got ",
                   t.scalar_type());
  TORCH_CHECK(t.dim() == 2, kOp, ": ", name, " must be 2-D; got ", t.dim(), "-D");
  TORCH_CHECK(t.device() == a.device(), kOp, ": ", name, " must be on ", a.device(), "; got ", t.device());
  TORCH_CHECK(t.is_contiguous() && aligned16(t), kOp, ": ", name,
              " must be contiguous and 16-byte aligned (row-major [rows, K]); got strides ", t.strides());
}

std::tuple<at::Tensor, at::Tensor> fp8_quantize_cuda(const at::Tensor& x_in, bool rowwise) {
  const ElemType t = quant_input_type(x_in);
  TORCH_CHECK(!rowwise || x_in.size(0) <= 0x7fffffff, kQuantOp, ": rowwise takes at most 2^31 - 1 rows; got ",
              x_in.size(0));
  const at::Tensor x = x_in.contiguous();
  DeviceGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor q = at::empty({rows, cols}, x.options().dtype(at::kFloat8_e4m3fn));
  // tensorwise: the scale and the kernel's amax scratch in one allocation
  at::Tensor buf = at::empty({rowwise ? rows : 2}, x.options().dtype(at::kFloat));
  const cudaError_t e = cuda::fp8_quantize(t, x.const_data_ptr(), rows, cols, rowwise,
                                           static_cast<uint8_t*>(q.mutable_data_ptr()), buf.mutable_data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, kQuantOp, ": CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  if (x.numel() == 0) buf.fill_(1.f);  // no amax: scale 1, as for an all-zero input (and the CPU op)
  return {q, rowwise ? buf.reshape({rows, 1}) : buf.narrow(0, 0, 1).reshape({1, 1})};
}

std::tuple<at::Tensor, at::Tensor> pad_columns_sum_cuda(const at::Tensor& x, int64_t multiple, bool pad, bool sums) {
  const int64_t Lp = check_pad_columns(x, multiple);
  TORCH_CHECK(x.is_cuda(), kPadOp, ": x must be a CUDA tensor; got ", x.device());
  DeviceGuard guard(x.device());
  const int64_t M = x.size(0), L = x.size(1);
  at::Tensor out = at::empty({pad ? M : 0, pad ? Lp : 0}, x.options());
  at::Tensor s = at::empty({sums ? L : 0}, x.options().dtype(at::kFloat));
  if (sums && M == 0) s.zero_();
  if (!pad && !sums) return {out, s};  // nothing asked
  int sms = 0;
  cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index());
  TORCH_CHECK(e == cudaSuccess, kPadOp, ": cudaDeviceGetAttribute: ", cudaGetErrorString(e));
  const int64_t L8 = (L + 7) / 8 * 8;  // the kernel's column range when not padding
  // (the row splits, hence the sums' order, depend on M and L only: the same bits whatever pad and multiple)
  const int64_t splits = cuda::pad_columns_sum_splits(M, L8, sms);
  at::Tensor partial;
  if (sums && splits > 1) partial = at::empty({splits * L}, x.options().dtype(at::kFloat));
  e = cuda::pad_columns_sum(static_cast<const uint16_t*>(x.const_data_ptr()), x.scalar_type() == at::kHalf, M, L,
                            x.stride(0), x.stride(1),
                            pad ? static_cast<uint16_t*>(out.mutable_data_ptr()) : nullptr, pad ? Lp : L8,
                            sums ? s.mutable_data_ptr<float>() : nullptr,
                            partial.defined() ? partial.mutable_data_ptr<float>() : nullptr, splits,
                            c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, kPadOp, ": CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  return {out, s};
}

at::Tensor fp8_gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale,
                         const std::optional<at::Tensor>& bias, int64_t config) {
  TORCH_CHECK(a.is_cuda(), kOp, ": a must be a CUDA tensor; got ", a.device());
  check_operand("a", a, a);
  check_operand("b", b, a);
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  TORCH_CHECK(b.size(1) == K, kOp, ": b must be [N, ", K, "] (a's K); got ", b.sizes());
  TORCH_CHECK(K % 16 == 0 && K > 0, kOp, ": K (a.shape[1]) must be a positive multiple of 16; got ", K);
  TORCH_CHECK(N > 0, kOp, ": N (b.shape[0]) must be positive; got ", N);
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, kOp, ": scale must be float32; got ", scale.scalar_type());
  const bool per_col = scale.numel() != 1;
  TORCH_CHECK(scale.device() == a.device() && (!per_col || (scale.dim() == 1 && scale.size(0) == N &&
                                                            scale.is_contiguous() && aligned16(scale))),
              kOp, ": scale must be one value or a contiguous, 16-byte aligned [", N, "] tensor (one per column) on ",
              a.device(), "; got ", scale.sizes(), " on ", scale.device());
  if (bias) {
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kBFloat16, kOp, ": bias must be bfloat16; got ", bias->scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->device() == a.device() && bias->is_contiguous() &&
                    aligned16(*bias),
                kOp, ": bias must be a contiguous, 16-byte aligned [", N, "] tensor on ", a.device(), "; got ",
                bias->sizes(), " on ", bias->device());
  }
  DeviceGuard guard(a.device());
  const std::vector<std::string> configs = fp8_gemm_configs();
  TORCH_CHECK(!configs.empty(), kOp, ": needs an sm_90 device and a build with the 90a target (",
              "LARGEOUT_CUDA_ARCHS); this device or build has no FP8 wgmma kernels");
  TORCH_CHECK(config >= -1 && config < int64_t(configs.size()), kOp, ": config must be -1 (default) or in [0, ",
              configs.size(), "); got ", config);
  // rows of N rounded up to 8 (16-byte aligned for the TMA store); a [M, N] view when N is not
  const int64_t ldd = (N + 7) / 8 * 8;
  if (M == 0) return at::empty({0, ldd}, a.options().dtype(at::kBFloat16)).narrow(1, 0, N);  // an empty batch
  TORCH_CHECK(cuda::sm90::fp8_gemm_supported(M, N, K, ldd), kOp, ": M, N and K must each be below 2^31; got M=", M,
              ", N=", N, ", K=", K);
  const int c = config < 0 ? 0 : int(config);
  const at::Tensor s = per_col ? scale : scale.reshape({1}).contiguous();
  int sms = 0;
  cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device().index());
  TORCH_CHECK(e == cudaSuccess, kOp, ": cudaDeviceGetAttribute: ", cudaGetErrorString(e));
  at::Tensor y = at::empty({M, ldd}, a.options().dtype(at::kBFloat16));
  const size_t ws_bytes = cuda::sm90::fp8_gemm_workspace_bytes(c, per_col, M, N, K, sms);
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({int64_t(ws_bytes)}, a.options().dtype(at::kByte));
  e = cuda::sm90::fp8_gemm(c, a.const_data_ptr(), b.const_data_ptr(), s.const_data_ptr<float>(), per_col,
                           bias ? bias->const_data_ptr() : nullptr, y.mutable_data_ptr(), M, N, K, ldd,
                           ws_bytes > 0 ? ws.mutable_data_ptr() : nullptr, ws_bytes, sms, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, kOp, ": CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  return ldd == N ? y : y.narrow(1, 0, N);
}
#endif

}  // namespace
}  // namespace largeout

TORCH_LIBRARY_IMPL(largeout, CPU, m) {
  m.impl("fp8_gemm", &largeout::fp8_gemm_cpu);
  m.impl("fp8_quantize", &largeout::fp8_quantize_cpu);
  m.impl("pad_columns_sum", &largeout::pad_columns_sum_cpu);
}

#ifdef LARGEOUT_WITH_CUDA
TORCH_LIBRARY_IMPL(largeout, CUDA, m) {
  m.impl("fp8_gemm", &largeout::fp8_gemm_cuda);
  m.impl("fp8_quantize", &largeout::fp8_quantize_cuda);
  m.impl("pad_columns_sum", &largeout::pad_columns_sum_cuda);
}
#endif
