// Torch bindings of the group-shared fixed fan-in layer: argument checks at the
// boundary, then the CPU or CUDA kernels of csrc/kernels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "kernels/group_sparse.h"
#include "ops/checks.h"

#ifdef LARGEOUT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "ops/device_guard.h"

#include "kernels/cuda/group_sparse_cuda.h"
#include "kernels/cuda/sm90/group_sparse_sm90.h"
#endif

namespace largeout {
namespace {

constexpr const char* kOp = "largeout.group_sparse_linear";

// Error policy: dtype problems raise c10::TypeError; shape and value problems raise
// c10::Error (RuntimeError). c10::ValueError is avoided: thrown from an extension it
// crashed the process on one torch 2.11 image (its vtable binds to libc10's copy).
// The Python layer (functional.py) checks the same things first and raises
// ValueError, so users see ValueError either way.
constexpr int64_t kMaxFanInAll = 4096;

DType to_dtype(at::ScalarType st, const char* name) {
  switch (st) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      break;
  }
  TORCH_CHECK_TYPE(false, kOp, ": ", name, " must be float32, float64, bfloat16 or float16; got ", st);
}
DType to_dtype(const at::Tensor& t, const char* name) { return to_dtype(t.scalar_type(), name); }

void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), kOp, ": ", name, " must have the dtype of ", ref_name, " (",
                   ref.scalar_type(), "); got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), kOp, ": ", name, " must be on the device of ", ref_name, " (", ref.device(),
              "); got ", t.device());
}

void check_group_size(int64_t G) {
  TORCH_CHECK(G == 16 || G == 32 || G == 64 || G == 128, kOp, ": group_size must be one of 16, 32, 64, 128; got ",
                    G);
}

// Checks indices against weight-side shapes; returns K.
int64_t check_indices(const at::Tensor& indices, int64_t L, int64_t G, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt, kOp, ": indices must be int32; got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == ref.device(), kOp, ": indices must be on the device of x (", ref.device(), "); got ",
              indices.device());
  TORCH_CHECK(indices.dim() == 2, kOp, ": indices must be 2-D [ceil(L/G), K]; got ", indices.dim(),
                    "-D with shape ", indices.sizes());
  const int64_t ng = (L + G - 1) / G;
  TORCH_CHECK(indices.size(0) == ng, kOp, ": indices must have ceil(out_features / group_size) = ceil(", L, " / ",
                    G, ") = ", ng, " rows; got ", indices.size(0));
  const int64_t K = indices.size(1);
  TORCH_CHECK(K >= 8 && K % 8 == 0 && K <= kMaxFanInAll, kOp,
                    ": fan-in K (indices.shape[1]) must be a multiple of 8 in [8, ", kMaxFanInAll, "]; got ", K);
  return K;
}

// The CPU kernels read x[b, idx] and write dx[b, idx] unchecked: on the CPU every call checks
// the values of the (contiguous) table first, a scan of ceil(L/G) K ints against the kernels'
// B L K multiply-adds. (On CUDA that check would need a device-to-host copy per call; there the
// values are checked where they are set: the module, functional.validate_indices.)
void check_index_values_cpu(const at::Tensor& indices, int64_t H) {
  const int32_t* p = indices.const_data_ptr<int32_t>();
  const int64_t n = indices.numel(), K = indices.size(1);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < H, kOp, ": indices must lie in [0, in_features) = [0, ", H, "); found ", p[i],
                " at row ", i / K, ", column ", i % K);
}

GroupSparseShape make_shape(int64_t B, int64_t H, int64_t L, int64_t K, int64_t G) {
  TORCH_CHECK(K <= H, kOp, ": fan-in K = ", K, " cannot exceed in_features H = ", H,
                    " (indices are unique within a group)");
  GroupSparseShape s;
  s.batch = B;
  s.in_features = H;
  s.out_features = L;
  s.fan_in = K;
  s.group_size = G;
  return s;
}

ParallelFor torch_parallel_for() {
  return [](int64_t begin, int64_t end, int64_t grain, const ChunkFn& fn) {
    at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { fn(b, e); });
  };
}

#ifdef LARGEOUT_WITH_CUDA
void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, kOp, ": CUDA error in ", what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
}
cuda::DeviceInfo device_info() {
  cuda::DeviceInfo d;
  check_cuda(cuda::current_device_info(&d), "cudaDeviceGetAttribute");
  return d;
}
// The Hopper kernels read x, weight and indices with 16-byte vector and bulk copies.
// Tensors from torch's allocator are aligned; a view at an odd offset is copied.
at::Tensor aligned(const at::Tensor& t) {
  if (cuda::aligned16(t.const_data_ptr()) || t.numel() == 0) return t;
  return t.is_contiguous() ? t.clone() : t.contiguous();  // a fresh (aligned) allocation
}

// dY as given if it is a row-padded view that the pass reads by TMA on the planned (Hopper)
// path (shape.grad_ld set to its row stride), else contiguous.
void keep_rows_if_tma(at::Tensor& grad, GroupSparseShape& shape, DType dt, cuda::Pass pass, cuda::Path planned) {
  shape.grad_ld = 0;
  if (grad.is_contiguous()) return;
  shape.grad_ld = grad.stride(0);
  if (planned != cuda::Path::kSm90 || !cuda::dy_tma_supported(pass, dt, shape, device_info())) {
    grad = grad.contiguous();
    shape.grad_ld = 0;
  }
}
#endif

// dY as given where it is a row-padded view ([B, L] inside [B, ld] with ld a multiple of 8:
// the backward pads dY that way for the Hopper kernels that read it by TMA), else contiguous.
at::Tensor rows_of(const at::Tensor& grad) {
  const bool padded = grad.dim() == 2 && grad.size(0) > 1 && grad.stride(1) == 1 && grad.stride(0) > grad.size(1) &&
                      grad.stride(0) % 8 == 0;
  return padded ? grad : grad.contiguous();
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
struct FwdArgs {
  at::Tensor x, weight, indices, bias;
  GroupSparseShape shape;
  DType dtype;
};

// The weight must have the dtype of `ref` (x or grad_out), or be fp8 with ref bf16 (the fp8
// ops: checked by check_fp8_weight first).
void check_weight_dtype(const at::Tensor& weight, const at::Tensor& ref, const char* ref_name, bool fp8) {
  if (fp8) {
    TORCH_CHECK(weight.device() == ref.device(), kOp, ": weight must be on the device of ", ref_name, " (",
                ref.device(), "); got ", weight.device());
  } else {
    check_same(weight, "weight", ref, ref_name);
  }
}

FwdArgs check_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& indices,
                  const std::optional<at::Tensor>& bias, int64_t G, bool fp8 = false) {
  const DType dt = to_dtype(x, "x");
  TORCH_CHECK(x.dim() == 2, kOp, ": x must be 2-D [B, H] here; got shape ", x.sizes());
  check_weight_dtype(weight, x, "x", fp8);
  TORCH_CHECK(weight.dim() == 2, kOp, ": weight must be 2-D [L, K]; got shape ", weight.sizes());
  check_group_size(G);
  const int64_t L = weight.size(0);
  TORCH_CHECK(L >= 1, kOp, ": weight must have at least one row (out_features >= 1); got shape ",
                    weight.sizes());
  const int64_t K = check_indices(indices, L, G, x);
  TORCH_CHECK(weight.size(1) == K, kOp, ": weight must be [L, K] with K = indices.shape[1] = ", K,
                    "; got shape ", weight.sizes());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_same(*bias, "bias", x, "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == L, kOp, ": bias must be 1-D [", L, "]; got shape ",
                      bias->sizes());
    b = bias->contiguous();
  }
  return {x.contiguous(), weight.contiguous(), indices.contiguous(), b, make_shape(x.size(0), x.size(1), L, K, G), dt};
}

at::Tensor fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& indices,
                   const std::optional<at::Tensor>& bias, int64_t G) {
  FwdArgs a = check_fwd(x, weight, indices, bias, G);
  check_index_values_cpu(a.indices, a.shape.in_features);
  at::Tensor y = at::empty({a.shape.batch, a.shape.out_features}, a.x.options());
  if (a.shape.batch == 0) return y;
  cpu::group_sparse_fwd(a.dtype, a.shape, a.x.const_data_ptr(), a.weight.const_data_ptr(),
                        a.indices.const_data_ptr<int32_t>(), a.bias.defined() ? a.bias.const_data_ptr() : nullptr,
                        y.mutable_data_ptr(), torch_parallel_for());
  return y;
}

// ---------------------------------------------------------------------------
// Backward: input
// ---------------------------------------------------------------------------
struct DxArgs {
  at::Tensor grad, weight, indices;
  GroupSparseShape shape;
  DType dtype;
};

DxArgs check_dx(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& indices, int64_t G, int64_t H,
                bool fp8 = false) {
  const DType dt = to_dtype(grad, "grad_out");
  check_weight_dtype(weight, grad, "grad_out", fp8);
  TORCH_CHECK(weight.dim() == 2, kOp, ": weight must be 2-D [L, K]; got shape ", weight.sizes());
  check_group_size(G);
  const int64_t L = weight.size(0);
  TORCH_CHECK(L >= 1, kOp, ": weight must have at least one row (out_features >= 1); got shape ", weight.sizes());
  TORCH_CHECK(grad.dim() == 2 && grad.size(1) == L, kOp, ": grad_out must be [B, L] with L = ", L,
                    "; got shape ", grad.sizes());
  const int64_t K = check_indices(indices, L, G, grad);
  TORCH_CHECK(weight.size(1) == K, kOp, ": weight must be [L, K] with K = indices.shape[1] = ", K,
                    "; got shape ", weight.sizes());
  return {rows_of(grad), weight.contiguous(), indices.contiguous(), make_shape(grad.size(0), H, L, K, G), dt};
}

at::Tensor dx_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& indices, int64_t G,
                  c10::SymInt H) {
  DxArgs a = check_dx(grad, weight, indices, G, H.expect_int());
  check_index_values_cpu(a.indices, a.shape.in_features);
  a.grad = a.grad.contiguous();
  at::Tensor dx = at::empty({a.shape.batch, a.shape.in_features}, a.grad.options());
  if (a.shape.batch == 0) return dx;
  cpu::group_sparse_dx(a.dtype, a.shape, a.grad.const_data_ptr(), a.weight.const_data_ptr(),
                       a.indices.const_data_ptr<int32_t>(), dx.mutable_data_ptr(), torch_parallel_for());
  return dx;
}

// ---------------------------------------------------------------------------
// Backward: weight and bias
// ---------------------------------------------------------------------------
struct DwArgs {
  at::Tensor grad, x, indices;
  GroupSparseShape shape;
  DType dtype;
};

DwArgs check_dw(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& indices, int64_t G) {
  const DType dt = to_dtype(grad, "grad_out");
  check_same(x, "x", grad, "grad_out");
  TORCH_CHECK(grad.dim() == 2 && grad.size(1) >= 1, kOp, ": grad_out must be 2-D [B, L] with L >= 1; got shape ",
                    grad.sizes());
  TORCH_CHECK(x.dim() == 2 && x.size(0) == grad.size(0), kOp, ": x must be [B, H] with B = grad_out.shape[0] = ",
                    grad.size(0), "; got shape ", x.sizes());
  check_group_size(G);
  const int64_t L = grad.size(1);
  const int64_t K = check_indices(indices, L, G, grad);
  return {rows_of(grad), x.contiguous(), indices.contiguous(), make_shape(x.size(0), x.size(1), L, K, G), dt};
}

std::tuple<at::Tensor, at::Tensor> dw_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& indices,
                                          int64_t G) {
  DwArgs a = check_dw(grad, x, indices, G);
  check_index_values_cpu(a.indices, a.shape.in_features);
  a.grad = a.grad.contiguous();
  at::Tensor dw = at::empty({a.shape.out_features, a.shape.fan_in}, a.grad.options());
  at::Tensor db = at::empty({a.shape.out_features}, a.grad.options());
  if (a.shape.batch == 0) return {dw.zero_(), db.zero_()};
  cpu::group_sparse_dw(a.dtype, a.shape, a.grad.const_data_ptr(), a.x.const_data_ptr(),
                       a.indices.const_data_ptr<int32_t>(), dw.mutable_data_ptr(), db.mutable_data_ptr(),
                       torch_parallel_for());
  return {dw, db};
}

// ---------------------------------------------------------------------------
// fp8 weights (largeout.nn's fp8 layers): the layer's weight is weight * weight_scale in
// bf16, the values of the fp8_to_bf16 op. On CUDA the Hopper kernels upcast inside where
// they apply; elsewhere the weight is upcast by that op first (the results are the same).
// ---------------------------------------------------------------------------
constexpr const char* kOpFp8 = "largeout.group_sparse_linear_fp8";

// act (x or grad_out) bf16, weight fp8 [L, K], weight_scale none or float32 [L] on the
// weight's device. Returns the scale (contiguous) or an undefined tensor.
at::Tensor check_fp8_weight(const at::Tensor& act, const char* act_name, const at::Tensor& weight,
                            const std::optional<at::Tensor>& weight_scale) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat8_e4m3fn || weight.scalar_type() == at::kFloat8_e5m2, kOpFp8,
                   ": weight must be float8_e4m3fn or float8_e5m2; got ", weight.scalar_type());
  TORCH_CHECK_TYPE(act.scalar_type() == at::kBFloat16, kOpFp8, ": ", act_name,
                   " must be bfloat16 (the compute dtype of fp8 weights); got ", act.scalar_type());
  TORCH_CHECK(weight.dim() == 2, kOpFp8, ": weight must be 2-D [L, K]; got shape ", weight.sizes());
  if (!weight_scale.has_value() || !weight_scale->defined()) return at::Tensor();
  return check_row_scale_arg(kOpFp8, "weight_scale", *weight_scale, weight.size(0), weight.device());
}

// weight * scale in bf16 (the fp8_to_bf16 op).
at::Tensor upcast_weight(const at::Tensor& weight, const at::Tensor& scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("largeout::fp8_to_bf16", "")
                             .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(weight, scale.defined() ? std::optional<at::Tensor>(scale) : std::nullopt);
}

at::Tensor fwd_fp8_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& weight_scale,
                       const at::Tensor& indices, const std::optional<at::Tensor>& bias, int64_t G) {
  const at::Tensor sc = check_fp8_weight(x, "x", weight, weight_scale);
  check_fwd(x, weight, indices, bias, G, true);
  return fwd_cpu(x, upcast_weight(weight, sc), indices, bias, G);
}

at::Tensor dx_fp8_cpu(const at::Tensor& grad, const at::Tensor& weight, const std::optional<at::Tensor>& weight_scale,
                      const at::Tensor& indices, int64_t G, c10::SymInt H) {
  const at::Tensor sc = check_fp8_weight(grad, "grad_out", weight, weight_scale);
  check_dx(grad, weight, indices, G, H.expect_int(), true);
  return dx_cpu(grad, upcast_weight(weight, sc), indices, G, H);
}

// ---------------------------------------------------------------------------
// CUDA
// ---------------------------------------------------------------------------
#ifdef LARGEOUT_WITH_CUDA
at::Tensor fwd_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& indices,
                    const std::optional<at::Tensor>& bias, int64_t G) {
  FwdArgs a = check_fwd(x, weight, indices, bias, G);
  DeviceGuard guard(a.x.device());
  at::Tensor y = at::empty({a.shape.batch, a.shape.out_features}, a.x.options());
  if (a.shape.batch == 0) return y;
  a.x = aligned(a.x);
  a.weight = aligned(a.weight);
  a.indices = aligned(a.indices);
  check_cuda(cuda::group_sparse_fwd(a.dtype, a.shape, a.x.const_data_ptr(), a.weight.const_data_ptr(),
                                    a.indices.const_data_ptr<int32_t>(),
                                    a.bias.defined() ? a.bias.const_data_ptr() : nullptr, y.mutable_data_ptr(),
                                    c10::cuda::getCurrentCUDAStream()),
             "group_sparse_fwd");
  return y;
}

// dx's preparation, shared by the bf16 and fp8 ops: where the planned path is the Hopper
// one, dY, weight and indices 16-byte aligned and dY kept row-padded if the pass reads it by
// TMA; then the plan, made once dY's row stride is known (the Hopper layout, splits and
// workspace, depends on it).
cuda::DxPlan prepare_dx(DxArgs& a) {
  const cuda::Path path = cuda::choose_path(cuda::Pass::kInput, a.dtype, a.shape, device_info());
  if (path == cuda::Path::kSm90) {
    a.grad = aligned(a.grad);
    a.weight = aligned(a.weight);
    a.indices = aligned(a.indices);
  }
  keep_rows_if_tma(a.grad, a.shape, a.dtype, cuda::Pass::kInput, path);
  return cuda::group_sparse_dx_plan(a.dtype, a.shape, device_info());
}

// dx by the kernels of a.dtype (a prepared by prepare_dx, batch >= 1).
at::Tensor launch_dx(const DxArgs& a, const cuda::DxPlan& plan) {
  at::Tensor dx = at::empty({a.shape.batch, a.shape.in_features}, a.grad.options());
  at::Tensor workspace = at::empty({plan.workspace_bytes}, a.grad.options().dtype(at::kByte));
  check_cuda(cuda::group_sparse_dx(a.dtype, a.shape, plan, a.grad.const_data_ptr(), a.weight.const_data_ptr(),
                                   a.indices.const_data_ptr<int32_t>(), dx.mutable_data_ptr(),
                                   workspace.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "group_sparse_dx");
  return dx;
}

at::Tensor dx_cuda(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& indices, int64_t G,
                   c10::SymInt H) {
  DxArgs a = check_dx(grad, weight, indices, G, H.expect_int());
  DeviceGuard guard(a.grad.device());
  if (a.shape.batch == 0) return at::empty({0, a.shape.in_features}, a.grad.options());
  const cuda::DxPlan plan = prepare_dx(a);
  return launch_dx(a, plan);
}

std::tuple<at::Tensor, at::Tensor> dw_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& indices,
                                           int64_t G) {
  DwArgs a = check_dw(grad, x, indices, G);
  DeviceGuard guard(a.grad.device());
  at::Tensor dw = at::empty({a.shape.out_features, a.shape.fan_in}, a.grad.options());
  at::Tensor db = at::empty({a.shape.out_features}, a.grad.options());
  if (a.shape.batch == 0) return {dw.zero_(), db.zero_()};
  const cuda::DwPlan plan = cuda::group_sparse_dw_plan(a.dtype, a.shape, device_info());
  if (plan.path == cuda::Path::kSm90) a.grad = aligned(a.grad);
  keep_rows_if_tma(a.grad, a.shape, a.dtype, cuda::Pass::kWeight, plan.path);
  at::Tensor workspace = at::empty({plan.workspace_bytes}, a.grad.options().dtype(at::kByte));
  check_cuda(cuda::group_sparse_dw(a.dtype, a.shape, plan, a.grad.const_data_ptr(), a.x.const_data_ptr(),
                                   a.indices.const_data_ptr<int32_t>(), dw.mutable_data_ptr(), db.mutable_data_ptr(),
                                   workspace.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "group_sparse_dw");
  return {dw, db};
}

at::Tensor fwd_fp8_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& weight_scale,
                        const at::Tensor& indices, const std::optional<at::Tensor>& bias, int64_t G) {
  const at::Tensor sc = check_fp8_weight(x, "x", weight, weight_scale);
  FwdArgs a = check_fwd(x, weight, indices, bias, G, true);
  DeviceGuard guard(a.x.device());
  if (!cuda::fp8_kernels_apply(cuda::Pass::kForward, a.shape, device_info()))
    return fwd_cuda(x, upcast_weight(weight, sc), indices, bias, G);
  at::Tensor y = at::empty({a.shape.batch, a.shape.out_features}, a.x.options());
  if (a.shape.batch == 0) return y;
  a.x = aligned(a.x);
  a.weight = aligned(a.weight);
  a.indices = aligned(a.indices);
  check_cuda(cuda::group_sparse_fwd_fp8(weight.scalar_type() == at::kFloat8_e4m3fn, a.shape, a.x.const_data_ptr(),
                                        a.weight.const_data_ptr(), sc.defined() ? sc.const_data_ptr<float>() : nullptr,
                                        a.indices.const_data_ptr<int32_t>(),
                                        a.bias.defined() ? a.bias.const_data_ptr() : nullptr, y.mutable_data_ptr(),
                                        c10::cuda::getCurrentCUDAStream()),
             "group_sparse_fwd_fp8");
  return y;
}

at::Tensor dx_fp8_cuda(const at::Tensor& grad, const at::Tensor& weight, const std::optional<at::Tensor>& weight_scale,
                       const at::Tensor& indices, int64_t G, c10::SymInt H) {
  const at::Tensor sc = check_fp8_weight(grad, "grad_out", weight, weight_scale);
  DxArgs a = check_dx(grad, weight, indices, G, H.expect_int(), true);
  DeviceGuard guard(a.grad.device());
  if (a.shape.batch == 0) return at::empty({0, a.shape.in_features}, a.grad.options());
  const cuda::DxPlan plan = prepare_dx(a);  // the bf16 plan: its splits and workspace serve the fp8 kernels too
  if (plan.path != cuda::Path::kSm90 || !cuda::fp8_kernels_apply(cuda::Pass::kInput, a.shape, device_info())) {
    a.weight = aligned(upcast_weight(weight, sc));
    return launch_dx(a, plan);
  }
  at::Tensor dx = at::empty({a.shape.batch, a.shape.in_features}, a.grad.options());
  at::Tensor workspace = at::empty({plan.workspace_bytes}, a.grad.options().dtype(at::kByte));
  check_cuda(cuda::group_sparse_dx_fp8(weight.scalar_type() == at::kFloat8_e4m3fn, a.shape, plan,
                                       a.grad.const_data_ptr(), a.weight.const_data_ptr(),
                                       sc.defined() ? sc.const_data_ptr<float>() : nullptr,
                                       a.indices.const_data_ptr<int32_t>(), dx.mutable_data_ptr(),
                                       workspace.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "group_sparse_dx_fp8");
  return dx;
}
#endif

}  // namespace

// ---------------------------------------------------------------------------
// Kernel choice (schemas in module.cpp): the policy, the path a problem takes, and
// launch counts per path. Without CUDA there is one path ("cpu").
// ---------------------------------------------------------------------------
void set_kernel_policy(const std::string& policy) {
  TORCH_CHECK(policy == "auto" || policy == "generic", "largeout: kernel policy must be \"auto\" or \"generic\"; got \"",
              policy, "\"");
#ifdef LARGEOUT_WITH_CUDA
  cuda::set_kernel_policy(policy == "auto" ? cuda::KernelPolicy::kAuto : cuda::KernelPolicy::kGeneric);
#endif
}

std::string get_kernel_policy() {
#ifdef LARGEOUT_WITH_CUDA
  return cuda::kernel_policy() == cuda::KernelPolicy::kAuto ? "auto" : "generic";
#else
  return "auto";
#endif
}

#ifdef LARGEOUT_WITH_CUDA
namespace {
cuda::Pass parse_pass(const std::string& pass) {
  if (pass == "forward") return cuda::Pass::kForward;
  if (pass == "input") return cuda::Pass::kInput;
  TORCH_CHECK(pass == "weight", "largeout: pass must be \"forward\", \"input\" or \"weight\"; got \"", pass, "\"");
  return cuda::Pass::kWeight;
}
}  // namespace
#endif

// The CUDA kernels the current device would run for this problem: "sm90" or "generic";
// for an fp8 dtype (the weight's, with bf16 activations) "sm90-fp8" where the forward or
// dx kernels for fp8 weights apply, else the path of the bf16 kernels after the upcast
// (the weight pass never reads the weight: its bf16 path).
std::string cuda_kernel_path(const std::string& pass, at::ScalarType dtype, int64_t B, int64_t H, int64_t L, int64_t K,
                             int64_t G) {
#ifdef LARGEOUT_WITH_CUDA
  const cuda::Pass p = parse_pass(pass);
  if (dtype == at::kFloat8_e4m3fn || dtype == at::kFloat8_e5m2) {
    // dx's choice depends on dY's row stride: contiguous rows here. (Where L % 8 != 0 and
    // B > 1 the layer's backward passes dY row-padded to a multiple of 8, which dx takes as
    // it would for such an L.)
    if (p != cuda::Pass::kWeight && cuda::fp8_kernels_apply(p, make_shape(B, H, L, K, G), device_info()))
      return "sm90-fp8";
    dtype = at::kBFloat16;
  }
  const DType dt = to_dtype(dtype, "dtype");
  const cuda::Path path = cuda::choose_path(p, dt, make_shape(B, H, L, K, G), device_info());
  return path == cuda::Path::kSm90 ? "sm90" : "generic";
#else
  TORCH_CHECK(false, "largeout: built without CUDA kernels");
#endif
}

// Whether the pass's CUDA kernels would read dY by TMA with row stride ld (>= L): where ld is a
// multiple of 8 (a row-padded dY), or through row classes where it is not. For an fp8 dtype (the
// weight's) the input pass's fp8 kernels, which need a multiple of 8; the weight pass's bf16 ones.
bool cuda_reads_dy_by_tma(const std::string& pass, at::ScalarType dtype, int64_t B, int64_t H, int64_t L, int64_t K,
                          int64_t G, int64_t ld) {
#ifdef LARGEOUT_WITH_CUDA
  const cuda::Pass p = parse_pass(pass);
  TORCH_CHECK(ld >= L, "largeout: ld must be at least L = ", L, "; got ", ld);
  GroupSparseShape shape = make_shape(B, H, L, K, G);
  shape.grad_ld = ld;
  if (dtype == at::kFloat8_e4m3fn || dtype == at::kFloat8_e5m2) {
    if (p == cuda::Pass::kInput) return ld % 8 == 0 && cuda::fp8_kernels_apply(p, shape, device_info());
    dtype = at::kBFloat16;
  }
  return cuda::dy_tma_supported(p, to_dtype(dtype, "dtype"), shape, device_info());
#else
  TORCH_CHECK(false, "largeout: built without CUDA kernels");
#endif
}

// Launch counts since start: [forward generic, forward sm90, input generic, input sm90,
// weight generic, weight sm90, forward sm90-fp8, input sm90-fp8, weight sm90-fp8, forward
// sm90 launches of G = 128 layers through the G = 64 kernel (also counted as forward sm90), weight
// and input sm90 launches through row classes (also counted as weight and input sm90)].
std::vector<int64_t> cuda_launch_counts() {
  std::vector<int64_t> out(12, 0);
#ifdef LARGEOUT_WITH_CUDA
  for (int p = 0; p < 3; ++p) {
    for (int q = 0; q < 2; ++q) out[2 * p + q] = cuda::launch_count(cuda::Pass(p), cuda::Path(q));
    out[6 + p] = cuda::launch_count(cuda::Pass(p), cuda::Path::kSm90Fp8);
  }
  out[9] = cuda::sm90::fwd_g128_as_64_launches();
  out[10] = cuda::sm90::dw_row_class_launches();
  out[11] = cuda::sm90::dx_row_class_launches();
#endif
  return out;
}

}  // namespace largeout

TORCH_LIBRARY_IMPL(largeout, CPU, m) {
  m.impl("group_sparse_linear", &largeout::fwd_cpu);
  m.impl("group_sparse_linear_backward_input", &largeout::dx_cpu);
  m.impl("group_sparse_linear_backward_weight", &largeout::dw_cpu);
  m.impl("group_sparse_linear_fp8", &largeout::fwd_fp8_cpu);
  m.impl("group_sparse_linear_fp8_backward_input", &largeout::dx_fp8_cpu);
}

#ifdef LARGEOUT_WITH_CUDA
TORCH_LIBRARY_IMPL(largeout, CUDA, m) {
  m.impl("group_sparse_linear", &largeout::fwd_cuda);
  m.impl("group_sparse_linear_backward_input", &largeout::dx_cuda);
  m.impl("group_sparse_linear_backward_weight", &largeout::dw_cuda);
  m.impl("group_sparse_linear_fp8", &largeout::fwd_fp8_cuda);
  m.impl("group_sparse_linear_fp8_backward_input", &largeout::dx_fp8_cuda);
}
#endif
