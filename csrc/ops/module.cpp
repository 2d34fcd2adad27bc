// largeout._C: the Python extension module. Importing it registers the ops below
// with torch; Python code reaches them as torch.ops.largeout.*.
// All operator schemas live here, in one place.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include <ATen/core/ScalarType.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "largeout native ops (registered in torch.ops.largeout)",
                            -1, nullptr};
  return PyModule_Create(&def);
}

#ifndef LARGEOUT_CUDA_VERSION
#define LARGEOUT_CUDA_VERSION ""
#endif
#ifndef LARGEOUT_CUTLASS_VERSION
#define LARGEOUT_CUTLASS_VERSION ""
#endif

namespace {

std::string json_str_or_null(const char* s) {
  return s[0] ? std::string("\"") + s + "\"" : std::string("null");
}

// What this binary was compiled with, as a JSON object.
std::string build_info() {
#ifdef LARGEOUT_WITH_CUDA
  const bool cuda = true;
  const std::string archs = LARGEOUT_CUDA_ARCHS;
#else
  const bool cuda = false;
  const std::string archs;
#endif
  std::string arch_list = "[";
  size_t start = 0;
  while (cuda && start <= archs.size()) {
    size_t end = archs.find(',', start);
    if (end == std::string::npos) end = archs.size();
    if (end > start) arch_list += std::string(arch_list.size() > 1 ? ", " : "") + "\"" + archs.substr(start, end - start) + "\"";
    start = end + 1;
  }
  arch_list += "]";
  // The CPU kernels' parallel loops (at::parallel_for, inlined here) use torch's threads only
  // where this binary was compiled with OpenMP.
#ifdef _OPENMP
  const std::string cpu_threads = "\"openmp\"";
#else
  const std::string cpu_threads = "\"one\"";
#endif
  return std::string("{") + "\"version\": \"" LARGEOUT_VERSION "\", " + "\"torch\": \"" LARGEOUT_TORCH_VERSION "\", " +
         "\"cuda_kernels\": " + (cuda ? "true" : "false") + ", " + "\"cuda\": " + json_str_or_null(LARGEOUT_CUDA_VERSION) +
         ", " + "\"cuda_archs\": " + arch_list + ", " + "\"cutlass\": " + json_str_or_null(LARGEOUT_CUTLASS_VERSION) +
         ", \"cpu_threads\": " + cpu_threads + "}";
}

}  // namespace

namespace largeout {
// Defined in group_sparse_ops.cpp.
void set_kernel_policy(const std::string& policy);
std::string get_kernel_policy();
std::string cuda_kernel_path(const std::string& pass, at::ScalarType dtype, int64_t B, int64_t H, int64_t L, int64_t K,
                             int64_t G);
bool cuda_reads_dy_by_tma(const std::string& pass, at::ScalarType dtype, int64_t B, int64_t H, int64_t L, int64_t K,
                          int64_t G, int64_t ld);
std::vector<int64_t> cuda_launch_counts();
// Defined in fp8_ops.cpp.
std::vector<std::string> fp8_gemm_configs();
}  // namespace largeout

TORCH_LIBRARY(largeout, m) {
  m.def("build_info() -> str", &build_info);
  // CUDA kernel choice: "auto" (Hopper kernels where they apply) or "generic".
  m.def("set_kernel_policy(str policy) -> ()", &largeout::set_kernel_policy);
  m.def("get_kernel_policy() -> str", &largeout::get_kernel_policy);
  m.def("cuda_kernel_path(str pass_, ScalarType dtype, int B, int H, int L, int K, int G) -> str",
        &largeout::cuda_kernel_path);
  m.def("cuda_reads_dy_by_tma(str pass_, ScalarType dtype, int B, int H, int L, int K, int G, int ld) -> bool",
        &largeout::cuda_reads_dy_by_tma);
  m.def("cuda_launch_counts() -> int[]", &largeout::cuda_launch_counts);
  // Stochastic rounding of float32 x to dtype (bfloat16, float16, float8_e4m3fn,
  // float8_e5m2) with Philox bits keyed by (seed, offset).
  m.def("stochastic_round(Tensor x, ScalarType dtype, int seed, int offset) -> Tensor");
  m.def("fp8_to_bf16(Tensor x, Tensor? row_scale=None) -> Tensor");
  // FP8 GEMM (sm_90): bf16 scale * a @ b^T + bias, a [M, K] and b [N, K] e4m3; config -1 = default.
  m.def("fp8_gemm(Tensor a, Tensor b, Tensor scale, Tensor? bias, int config=-1) -> Tensor");
  m.def("fp8_gemm_configs() -> str[]", &largeout::fp8_gemm_configs);
  // (e4m3 q, fp32 scale [1, 1] or [rows, 1]) with q * scale ~ x [rows, cols] (largeout.nn.fp8.quantize).
  m.def("fp8_quantize(Tensor x, bool rowwise) -> (Tensor, Tensor)");
  // The backward's dY pass: (x [M, L] bf16 or fp16 copied into [M, L_pad] with zero columns after L,
  // L_pad = L rounded up to `multiple`, or an empty tensor when not pad; fp32 column sums [L],
  // or an empty tensor when not sums).
  m.def("pad_columns_sum(Tensor x, int multiple, bool pad, bool sums) -> (Tensor, Tensor)");
  m.def("_sr_rule_mismatches(Tensor x, Tensor rnd, ScalarType dtype) -> int");
  // (sqrt(a), a / b) as AdamW's step takes them, 8 consecutive elements at a time (test hook).
  m.def("_group_sqrt_div(Tensor a, Tensor b) -> (Tensor, Tensor)");
  m.def("_fused_optim_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] buf1, Tensor(c!)[] buf2, "
        "Tensor(d!)[] comps, Tensor[] scales, int kind, bool stochastic, float lr, float momentum, float dampening, bool nesterov, "
        "bool first, float weight_decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, "
        "int seed, int offset) -> ()");
  // The same arguments' checks alone, writing nothing (largeout.optim checks every launch of a
  // step this way before the first one writes, where a step takes several).
  m.def("_fused_optim_check(Tensor[] params, Tensor[] grads, Tensor[] buf1, Tensor[] buf2, Tensor[] comps, "
        "Tensor[] scales, int kind, bool stochastic, float lr, float momentum, float dampening, bool nesterov, "
        "bool first, float weight_decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, "
        "int seed, int offset) -> ()");
  // Group-shared fixed fan-in linear: x [B, H], weight [L, K], indices [ceil(L/G), K] int32.
  m.def("group_sparse_linear(Tensor x, Tensor weight, Tensor indices, Tensor? bias, int group_size) -> Tensor");
  // dx [B, H] from grad_out [B, L].
  m.def("group_sparse_linear_backward_input(Tensor grad_out, Tensor weight, Tensor indices, int group_size, "
        "SymInt in_features) -> Tensor");
  // The same with an fp8 weight [L, K] (float8_e4m3fn or float8_e5m2) times weight_scale [L]
  // (float32, optional), x and grad_out bf16 (the dW pass never reads the weight).
  m.def("group_sparse_linear_fp8(Tensor x, Tensor weight, Tensor? weight_scale, Tensor indices, Tensor? bias, "
        "int group_size) -> Tensor");
  m.def("group_sparse_linear_fp8_backward_input(Tensor grad_out, Tensor weight, Tensor? weight_scale, "
        "Tensor indices, int group_size, SymInt in_features) -> Tensor");
  // (dweight [L, K], dbias [L]) from grad_out [B, L] and x [B, H].
  m.def("group_sparse_linear_backward_weight(Tensor grad_out, Tensor x, Tensor indices, int group_size) "
        "-> (Tensor, Tensor)");
}
