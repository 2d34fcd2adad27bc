// Torch bindings of the fused optimizer step (schema in module.cpp): argument checks
// (before anything is written), then the CPU loop or one CUDA launch for all tensors.
// Called by largeout.optim, which draws the random key and keeps the state tensors.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/optim_step.h"

#ifdef LARGEOUT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "ops/device_guard.h"

#include "kernels/cuda/optim_step_cuda.h"
#endif

namespace largeout {
namespace {

constexpr const char* kOp = "largeout._fused_optim_step_";

bool to_elem(at::ScalarType dt, ElemType* out) {
  switch (dt) {
    case at::kFloat: *out = ElemType::kF32; return true;
    case at::kBFloat16: *out = ElemType::kBF16; return true;
    case at::kHalf: *out = ElemType::kF16; return true;
    case at::kFloat8_e4m3fn: *out = ElemType::kE4M3; return true;
    case at::kFloat8_e5m2: *out = ElemType::kE5M2; return true;
    default: return false;
  }
}

// Checks one list against the parameters: same length (or empty when optional), same
// shapes and device, one dtype from `allowed`, contiguous. Returns its element type.
ElemType check_list(const char* name, at::TensorList list, at::TensorList params, bool optional,
                    std::initializer_list<at::ScalarType> allowed) {
  if (list.empty() && optional) return ElemType::kF32;
  TORCH_CHECK(list.size() == params.size(), kOp, ": ", name, " must hold ", params.size(),
              " tensors (one per parameter); got ", list.size());
  const at::ScalarType dt = list[0].scalar_type();
  bool ok = false;
  std::string names;
  for (auto a : allowed) {
    ok = ok || a == dt;
    names += (names.empty() ? "" : ", ") + std::string(c10::toString(a));
  }
  TORCH_CHECK_TYPE(ok, kOp, ": ", name, " must be of dtype ", names, "; got ", dt);
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& t = list[i];
    TORCH_CHECK_TYPE(t.scalar_type() == dt, kOp, ": ", name, "[", i, "] is ", t.scalar_type(), " but ", name,
                     "[0] is ", dt, " (one dtype per call)");
    TORCH_CHECK(t.device() == params[0].device(), kOp, ": ", name, "[", i, "] is on ", t.device(),
                " but params[0] is on ", params[0].device());
    TORCH_CHECK(t.sizes() == params[i].sizes(), kOp, ": ", name, "[", i, "] has shape ", t.sizes(), " but params[",
                i, "] has shape ", params[i].sizes());
    TORCH_CHECK(t.is_contiguous(), kOp, ": ", name, "[", i, "] must be contiguous");
  }
  ElemType e;
  to_elem(dt, &e);
  return e;
}

struct Prepared {
  std::vector<OptimSlot> slots;
  std::vector<int64_t> prefix;  // groups of 8 before each slot
  OptimTypes types;
  OptimHyper hyper;
};

// The op's arguments (schema in module.cpp), as prepare() and both entry points take them.
#define LARGEOUT_STEP_ARGS                                                                                   \
  at::TensorList params, at::TensorList grads, at::TensorList buf1, at::TensorList buf2, at::TensorList comps, \
      at::TensorList scales, int64_t kind, bool stochastic, double lr, double momentum, double dampening, bool nesterov, bool first,   \
      double weight_decay, double beta1, double beta2, double eps, double step_size, double inv_sqrt_bc2,      \
      int64_t seed, int64_t offset

Prepared prepare(LARGEOUT_STEP_ARGS) {
  TORCH_CHECK(!params.empty(), kOp, ": params must hold at least one tensor");
  TORCH_CHECK(kind == 0 || kind == 1, kOp, ": kind must be 0 (SGD) or 1 (AdamW); got ", kind);
  Prepared p;
  const auto pt = check_list("params", params, params, false,
                             {at::kFloat, at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn, at::kFloat8_e5m2});
  p.types.param = pt;
  p.types.grad = check_list("grads", grads, params, false,
                            {at::kFloat, at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn, at::kFloat8_e5m2});
  p.types.state = check_list("buf1", buf1, params, kind == 0, {at::kFloat, at::kBFloat16, at::kHalf});
  const ElemType s2 = check_list("buf2", buf2, params, kind == 0, {at::kFloat, at::kBFloat16, at::kHalf});
  if (kind == 1) {
    TORCH_CHECK(buf2[0].scalar_type() == buf1[0].scalar_type(), kOp, ": buf2 (exp_avg_sq) must have buf1's dtype ",
                buf1[0].scalar_type(), "; got ", buf2[0].scalar_type());
  } else {
    TORCH_CHECK(buf2.empty(), kOp, ": buf2 must be empty for SGD; got ", buf2.size(), " tensors");
  }
  (void)s2;
  p.types.comp = check_list("comps", comps, params, true, {at::kFloat, at::kBFloat16, at::kHalf});
  // The buffers' dtypes the kernels are built for: Kahan buffers (and SGD's momentum)
  // in comp_type(param) (the parameter's own dtype, bf16 for fp8 parameters).
  const ElemType want = comp_type(pt);
  const char* want_name = want == ElemType::kF32 ? "float32" : want == ElemType::kBF16 ? "bfloat16" : "float16";
  if (kind == 0) {
    TORCH_CHECK_TYPE(buf1.empty() || p.types.state == want, kOp, ": buf1 (momentum) must be ", want_name, " for ",
                     params[0].scalar_type(), " parameters; got ", buf1.empty() ? at::kFloat : buf1[0].scalar_type());
    p.types.state = want;
  }
  TORCH_CHECK_TYPE(comps.empty() || p.types.comp == want, kOp, ": comps (Kahan buffers) must be ", want_name,
                   " for ", params[0].scalar_type(), " parameters; got ",
                   comps.empty() ? at::kFloat : comps[0].scalar_type());
  p.types.comp = want;
  // Row scales (scaled fp8 parameters): none, or one float32 vector per parameter, a value
  // per row of the (2-D) parameter, whose rows are a multiple of 8 long.
  if (!scales.empty()) {
    TORCH_CHECK(scales.size() == params.size(), kOp, ": scales must be empty or hold ", params.size(),
                " tensors (one per parameter); got ", scales.size());
    TORCH_CHECK_TYPE(scalable(pt), kOp, ": scales are for float8 parameters; params are ", params[0].scalar_type());
    for (size_t i = 0; i < scales.size(); ++i) {
      const at::Tensor& sc = scales[i];
      TORCH_CHECK(params[i].dim() == 2 && params[i].size(1) % 8 == 0, kOp, ": params[", i, "] with a scale must be ",
                  "2-D with rows a multiple of 8 long; got shape ", params[i].sizes());
      TORCH_CHECK_TYPE(sc.scalar_type() == at::kFloat, kOp, ": scales[", i, "] must be float32; got ",
                       sc.scalar_type());
      TORCH_CHECK(sc.dim() == 1 && sc.size(0) == params[i].size(0), kOp, ": scales[", i, "] must have shape [",
                  params[i].size(0), "] (one per row of params[", i, "]); got ", sc.sizes());
      TORCH_CHECK(sc.device() == params[0].device(), kOp, ": scales[", i, "] is on ", sc.device(),
                  " but params[0] is on ", params[0].device());
      TORCH_CHECK(sc.is_contiguous(), kOp, ": scales[", i, "] must be contiguous");
    }
  }
  p.hyper = with_round_keys(OptimHyper{kind == 0 ? OptimKind::kSGD : OptimKind::kAdamW,
                                       stochastic,
                                       !comps.empty(),
                                       float(lr),
                                       float(momentum),
                                       float(dampening),
                                       float(weight_decay),
                                       nesterov,
                                       first,
                                       float(beta1),
                                       float(beta2),
                                       float(eps),
                                       float(step_size),
                                       float(inv_sqrt_bc2),
                                       float(1.0 - beta1),
                                       float(1.0 - beta2),
                                       float(1.0 - dampening),
                                       uint64_t(seed),
                                       uint64_t(offset),
                                       {}});
  int64_t base = 0, groups = 0;
  p.prefix.push_back(0);
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    p.slots.push_back(OptimSlot{params[i].data_ptr(), grads[i].const_data_ptr(),
                                buf1.empty() ? nullptr : buf1[i].data_ptr(),
                                buf2.empty() ? nullptr : buf2[i].data_ptr(),
                                comps.empty() ? nullptr : comps[i].data_ptr(), n, base,
                                scales.empty() ? nullptr : scales[i].const_data_ptr<float>(),
                                scales.empty() || params[i].dim() < 2 ? 0 : params[i].size(1)});
    base += (n + 7) / 8 * 8;
    groups += (n + 7) / 8;
    p.prefix.push_back(groups);
  }
  return p;
}

// The names of the op's arguments (LARGEOUT_STEP_ARGS), passed on to prepare().
#define LARGEOUT_STEP_NAMES                                                                                 \
  params, grads, buf1, buf2, comps, scales, kind, stochastic, lr, momentum, dampening, nesterov, first, weight_decay, \
      beta1, beta2, eps, step_size, inv_sqrt_bc2, seed, offset

// The step's checks alone (prepare() reads the tensors' metadata and addresses only, so one
// function serves CPU and CUDA tensors).
void check_step(LARGEOUT_STEP_ARGS) { (void)prepare(LARGEOUT_STEP_NAMES); }

void step_cpu(LARGEOUT_STEP_ARGS) {
  const Prepared p = prepare(LARGEOUT_STEP_NAMES);
  cpu::optim_step(p.slots.data(), p.prefix.data(), int(p.slots.size()), p.types, p.hyper, !scales.empty(),
                  [](int64_t b, int64_t e, int64_t grain, const ChunkFn& fn) {
                    at::parallel_for(b, e, grain, [&](int64_t lo, int64_t hi) { fn(lo, hi); });
                  });
}

#ifdef LARGEOUT_WITH_CUDA
void step_cuda(LARGEOUT_STEP_ARGS) {
  const Prepared p = prepare(LARGEOUT_STEP_NAMES);
  DeviceGuard guard(params[0].device());
  // The slot table and the prefix go to the device in one (pinned, asynchronous) copy.
  const size_t slot_bytes = p.slots.size() * sizeof(OptimSlot), prefix_bytes = p.prefix.size() * sizeof(int64_t);
  at::Tensor host = at::empty({int64_t(slot_bytes + prefix_bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), p.slots.data(), slot_bytes);
  std::memcpy(static_cast<uint8_t*>(host.data_ptr()) + slot_bytes, p.prefix.data(), prefix_bytes);
  const at::Tensor dev = host.to(params[0].device(), /*non_blocking=*/true);
  const auto* slots = reinterpret_cast<const OptimSlot*>(dev.const_data_ptr<uint8_t>());
  const auto* prefix = reinterpret_cast<const int64_t*>(dev.const_data_ptr<uint8_t>() + slot_bytes);
  const cudaError_t e = cuda::optim_step(slots, prefix, int(p.slots.size()), p.prefix.back(), p.types, p.hyper,
                                         !buf1.empty(), !comps.empty(), !scales.empty(),
                                         c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, kOp, ": CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
}
#endif

// Test hook, argument checks: the rounding target's type.
ElemType sr_rule_check(const at::Tensor& x, const at::Tensor& rnd, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat && rnd.scalar_type() == at::kInt, "largeout._sr_rule_mismatches: ",
                   "x must be float32 and rnd int32; got ", x.scalar_type(), " and ", rnd.scalar_type());
  TORCH_CHECK(x.device() == rnd.device() && x.numel() == rnd.numel(),
              "largeout._sr_rule_mismatches: x and rnd must be on one device and of equal size; got ", x.device(),
              " and ", rnd.device(), ", ", x.numel(), " and ", rnd.numel(), " elements");
  ElemType t;
  TORCH_CHECK(to_elem(dtype, &t) && t != ElemType::kF32, "largeout._sr_rule_mismatches: dtype must be a ",
              "16- or 8-bit float; got ", dtype);
  return t;
}

// Test hook: the number of (x, rnd) pairs where the integer rounding rule differs from
// its double-precision specification, in stochastic and in nearest mode.
int64_t sr_rule_mismatches(const at::Tensor& x, const at::Tensor& rnd, at::ScalarType dtype) {
  const ElemType t = sr_rule_check(x, rnd, dtype);
  const SrFormat f = sr_format_of(t);
  const at::Tensor xc = x.contiguous(), rc = rnd.contiguous();
  const float* xp = xc.const_data_ptr<float>();
  const auto* rp = reinterpret_cast<const uint32_t*>(rc.const_data_ptr<int32_t>());
  int64_t bad = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (sr_round_bits_fast(xp[i], f, rp[i]) != sr_round_bits(xp[i], f, rp[i])) ++bad;
    // nearest-even from the specification: the closer of the two neighbours, the even code on a tie
    const uint32_t lo = sr_round_bits(xp[i], f, 0xffffffffu), hi = sr_round_bits(xp[i], f, 0u);
    uint32_t want = lo;
    if (hi != lo) {
      const double dl = std::fabs(double(xp[i]) - double(decode_code(lo, t)));
      const double dh = std::fabs(double(decode_code(hi, t)) - double(xp[i]));
      want = dl < dh ? lo : (dh < dl ? hi : ((lo & 1u) ? hi : lo));
    }
    const uint32_t near = sr_round_bits_fast(xp[i], f, 0u, true);
    if (near != want) ++bad;
  }
  // The optimizers round 8 values at a time (round_group_codes): the same codes, in groups
  // of consecutive elements (the last one padded with zeros, which are not compared).
  auto groups = [&]<ElemType T>() {
    for (int64_t i0 = 0; i0 < x.numel(); i0 += 8) bad += group_rule_mismatches<T>(xp, rp, x.numel(), i0);
  };
  switch (t) {
    case ElemType::kBF16: groups.template operator()<ElemType::kBF16>(); break;
    case ElemType::kF16: groups.template operator()<ElemType::kF16>(); break;
    case ElemType::kE4M3: groups.template operator()<ElemType::kE4M3>(); break;
    case ElemType::kE5M2: groups.template operator()<ElemType::kE5M2>(); break;
    default: break;
  }
  return bad;
}

// Test hook, argument checks for _group_sqrt_div.
void group_sqrt_div_check(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "largeout._group_sqrt_div: ";
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat, op,
                   "a and b must be float32; got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.dim() == 1 && a.sizes() == b.sizes() && a.device() == b.device(), op,
              "a and b must be 1-D, of one size and on one device; got ", a.sizes(), " and ", b.sizes(), " on ",
              a.device(), " and ", b.device());
  TORCH_CHECK(a.numel() % 8 == 0, op, "the size must be a multiple of 8; got ", a.numel());
}

// Test hook: (sqrt_group(a), div_group(a, b)) over groups of 8, as AdamW's step takes them
// (on the CPU, op_sqrt and op_div element by element).
std::tuple<at::Tensor, at::Tensor> group_sqrt_div(const at::Tensor& a, const at::Tensor& b) {
  group_sqrt_div_check(a, b);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor s = at::empty_like(ac), q = at::empty_like(ac);
  const float *ap = ac.const_data_ptr<float>(), *bp = bc.const_data_ptr<float>();
  float *sp = s.data_ptr<float>(), *qp = q.data_ptr<float>();
  for (int64_t i0 = 0; i0 < a.numel(); i0 += 8) {
    float x[8], y[8], so[8], qo[8];
    for (int j = 0; j < 8; ++j) {
      x[j] = ap[i0 + j];
      y[j] = bp[i0 + j];
    }
    sqrt_group(x, so);
    div_group(x, y, qo);
    for (int j = 0; j < 8; ++j) {
      sp[i0 + j] = so[j];
      qp[i0 + j] = qo[j];
    }
  }
  return {s, q};
}

#ifdef LARGEOUT_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> group_sqrt_div_cuda(const at::Tensor& a, const at::Tensor& b) {
  group_sqrt_div_check(a, b);
  DeviceGuard guard(a.device());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor s = at::empty_like(ac), q = at::empty_like(ac);
  const cudaError_t e = cuda::group_sqrt_div(ac.const_data_ptr<float>(), bc.const_data_ptr<float>(), a.numel(),
                                             s.data_ptr<float>(), q.data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "largeout._group_sqrt_div: CUDA error: ", cudaGetErrorName(e), ": ",
              cudaGetErrorString(e));
  return {s, q};
}

// The same on the GPU: the device's group rounding and per-element rule against the
// specification (cuda::sr_rule_mismatches).
int64_t sr_rule_mismatches_cuda(const at::Tensor& x, const at::Tensor& rnd, at::ScalarType dtype) {
  const ElemType t = sr_rule_check(x, rnd, dtype);
  DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), rc = rnd.contiguous();
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kLong));
  const cudaError_t e = cuda::sr_rule_mismatches(xc.const_data_ptr<float>(),
                                                 reinterpret_cast<const uint32_t*>(rc.const_data_ptr<int32_t>()),
                                                 x.numel(), t, reinterpret_cast<unsigned long long*>(bad.data_ptr()),
                                                 c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "largeout._sr_rule_mismatches: CUDA error: ", cudaGetErrorName(e), ": ",
              cudaGetErrorString(e));
  return bad.item<int64_t>();
}
#endif

}  // namespace
}  // namespace largeout

TORCH_LIBRARY_IMPL(largeout, CPU, m) {
  m.impl("_fused_optim_step_", &largeout::step_cpu);
  m.impl("_fused_optim_check", &largeout::check_step);
  m.impl("_sr_rule_mismatches", &largeout::sr_rule_mismatches);
  m.impl("_group_sqrt_div", &largeout::group_sqrt_div);
}

#ifdef LARGEOUT_WITH_CUDA
TORCH_LIBRARY_IMPL(largeout, CUDA, m) {
  m.impl("_fused_optim_step_", &largeout::step_cuda);
  m.impl("_fused_optim_check", &largeout::check_step);
  m.impl("_sr_rule_mismatches", &largeout::sr_rule_mismatches_cuda);
  m.impl("_group_sqrt_div", &largeout::group_sqrt_div_cuda);
}
#endif
