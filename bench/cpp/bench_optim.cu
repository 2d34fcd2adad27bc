// The fused optimizer step alone (no torch, no Python): the CUDA launcher of
// kernels/cuda/optim_step.cu timed with CUDA events against a device-to-device copy in the
// same run, and its output checked against the same header's per-group rule run on the host
// (optim_update_range, what the CPU path runs) on sampled groups.
//
//   largeout_bench_optim [--cases sgd-e4m3,...] [--elements N] [--tensors T] [--iters I]
//                        [--check-groups C] [--out FILE]
//
// Cases (bench/bench_optim.py's, with the same element count, four tensors, N(0, 0.02)
// parameters, N(0, 1e-3) gradients and buffers, lr 1e-2, momentum 0.9, stochastic rounding):
//   sgd-e4m3           SGD on float8_e4m3fn parameters, bf16 gradients
//   sgd-momentum-e4m3  the same with a bf16 momentum buffer
//   sgd-bf16           SGD on bf16 parameters and gradients
//   sgd-momentum-bf16  the same with a bf16 momentum buffer
// Bytes = parameters, gradients and buffers read once, parameters and buffers written once;
// the copy reference moves a 4 GiB buffer (bytes read + written). The check runs one step at
// lr 10 (so that most sampled codes change; the output says how many did) on sampled groups:
// the first of each tensor, the first of its second 256-group run (a thread's second group of
// an iteration), the last and a stride through it. Exit status 3 when a checked element
// differs from the host rule. Built by CMake with the library's kernels; a variant of the
// kernel sources builds as `nvcc -std=c++20 -O3 --expt-relaxed-constexpr -arch=sm_90a
// -DLARGEOUT_WITH_CUDA=1 -I DIR/csrc DIR/csrc/kernels/cuda/optim_step.cu bench/cpp/bench_optim.cu`.
#include <cuda_runtime.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "kernels/cuda/optim_step_cuda.h"

namespace {

using largeout::ElemType;
using largeout::OptimHyper;
using largeout::OptimKind;
using largeout::OptimSlot;
using largeout::bench::median_ms;

// Codes of N(0, sigma) values in type t (round to nearest-even), from Philox under `key`:
// element i takes the Box-Muller pair of block i / 2.
__global__ void fill_normal(void* out, ElemType t, int64_t n, float sigma, uint64_t key) {
  const largeout::PhiloxKeys ks = largeout::philox_round_keys(key);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const largeout::Philox4x32 r = largeout::philox4x32_10(uint32_t(i >> 1), uint32_t(i >> 33), 7u, 0u, ks);
    const float u1 = (float(r.v[0] >> 8) + 1.f) * (1.f / 16777216.f), u2 = float(r.v[1] >> 8) * (1.f / 16777216.f);
    const float rad = sqrtf(-2.f * logf(u1)) * sigma;
    const float x = (i & 1) ? rad * sinpif(2.f * u2) : rad * cospif(2.f * u2);
    largeout::store_code(out, t, i, largeout::round_code(x, t, 0u, true));
  }
}

struct Case {
  const char* name;
  ElemType param, grad, state;
  bool momentum;
};
const Case kCases[] = {
    {"sgd-e4m3", ElemType::kE4M3, ElemType::kBF16, ElemType::kBF16, false},
    {"sgd-momentum-e4m3", ElemType::kE4M3, ElemType::kBF16, ElemType::kBF16, true},
    {"sgd-bf16", ElemType::kBF16, ElemType::kBF16, ElemType::kBF16, false},
    {"sgd-momentum-bf16", ElemType::kBF16, ElemType::kBF16, ElemType::kBF16, true},
};

// The host rule on one group (8 elements from element i0 of slot s, whose codes are in the
// 8-element host arrays of hs): what the CPU path computes.
void host_group(const Case& c, OptimSlot hs, const OptimHyper& h) {
  if (c.param == ElemType::kE4M3) {
    largeout::optim_update_range<OptimKind::kSGD, ElemType::kE4M3, ElemType::kBF16>(hs, c.grad, h, 0, 8);
  } else {
    largeout::optim_update_range<OptimKind::kSGD, ElemType::kBF16, ElemType::kBF16>(hs, c.grad, h, 0, 8);
  }
}

struct Tensors {
  std::vector<OptimSlot> slots;
  std::vector<void*> owned;
};

int bytes_of(ElemType t) { return largeout::elem_bytes(t); }

void* device_normal(ElemType t, int64_t n, float sigma, uint64_t key, std::vector<void*>& owned) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, size_t(n) * bytes_of(t)));
  owned.push_back(p);
  fill_normal<<<1024, 256>>>(p, t, n, sigma, key);
  CHECK_CUDA(cudaGetLastError());
  return p;
}

// Copies 8 elements of type t from device pointer p at element i into host bytes.
void fetch8(const void* p, ElemType t, int64_t i, std::vector<uint8_t>& host) {
  host.resize(8 * bytes_of(t));
  CHECK_CUDA(cudaMemcpy(host.data(), static_cast<const uint8_t*>(p) + i * bytes_of(t), host.size(),
                        cudaMemcpyDeviceToHost));
}

struct Row {
  std::string name;
  double ms, gbps;
  int64_t bytes, checked, mismatched, changed;  // changed: checked parameter codes the step changes
};

Row run_case(const Case& c, int64_t elements, int tensors, int iters, int check_groups) {
  Tensors T;
  const int64_t per = elements / tensors / 8 * 8;
  int64_t base = 0, groups = 0;
  std::vector<int64_t> prefix{0};
  for (int k = 0; k < tensors; ++k) {
    OptimSlot s{};
    s.param = device_normal(c.param, per, 0.02f, 100 + k, T.owned);
    s.grad = device_normal(c.grad, per, 1e-3f, 200 + k, T.owned);
    s.buf1 = c.momentum ? device_normal(c.state, per, 1e-3f, 300 + k, T.owned) : nullptr;
    s.numel = per;
    s.base = base;
    base += per;
    groups += per / 8;
    prefix.push_back(groups);
    T.slots.push_back(s);
  }
  OptimSlot* d_slots = nullptr;
  int64_t* d_prefix = nullptr;
  CHECK_CUDA(cudaMalloc(&d_slots, sizeof(OptimSlot) * T.slots.size()));
  CHECK_CUDA(cudaMalloc(&d_prefix, sizeof(int64_t) * prefix.size()));
  CHECK_CUDA(cudaMemcpy(d_slots, T.slots.data(), sizeof(OptimSlot) * T.slots.size(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_prefix, prefix.data(), sizeof(int64_t) * prefix.size(), cudaMemcpyHostToDevice));
  OptimHyper h{};
  h.kind = OptimKind::kSGD;
  h.stochastic = true;
  h.lr = 1e-2f;
  h.momentum = c.momentum ? 0.9f : 0.f;
  h.one_minus_dampening = 1.f;  // (dampening 0; the 1 - x terms come from the host, see OptimHyper)
  h.one_minus_beta1 = h.one_minus_beta2 = 1.f;
  h.seed = 1;
  h.offset = 12345;
  h = largeout::with_round_keys(h);
  const largeout::OptimTypes types{c.param, c.grad, c.state, largeout::comp_type(c.param)};
  auto launch_with = [&](const OptimHyper& hk) {
    return largeout::cuda::optim_step(d_slots, d_prefix, tensors, groups, types, hk, c.momentum, false, false, 0);
  };
  auto launch = [&] { return launch_with(h); };
  // The checked step takes lr 10, so that most sampled codes change (at lr 1e-2 a step moves an
  // fp8 weight by ~1e-5, far below its spacing, and SR keeps 97-98% of the codes: a group the
  // kernel never wrote, or one given another group's random bits, would mostly go unnoticed).
  OptimHyper hc = h;
  hc.lr = 10.f;
  CHECK_CUDA(cudaDeviceSynchronize());

  // The check: sampled groups (the first ones of each tensor, the first ones of the second
  // 256-group run, which a thread updates as its second group of an iteration, the last, and
  // a stride through the tensor) before and after one step, against the host rule.
  Row row{c.name, 0, 0, 0, 0, 0, 0};
  struct Sample {
    int k;
    int64_t i0;
    std::vector<uint8_t> p, g, b;
  };
  std::vector<Sample> samples;
  for (int k = 0; k < tensors; ++k) {
    for (int j = 0; j < check_groups; ++j) {
      const int64_t q = check_groups / 4, n = per / 8;
      const int64_t g = j < q ? j : j < 2 * q ? std::min<int64_t>(256 + j - q, n - 1)
                                              : (n - 1) - int64_t(j - 2 * q) * 9973 % n;
      Sample sm{k, g * 8, {}, {}, {}};
      fetch8(T.slots[k].param, c.param, sm.i0, sm.p);
      fetch8(T.slots[k].grad, c.grad, sm.i0, sm.g);
      if (c.momentum) fetch8(T.slots[k].buf1, c.state, sm.i0, sm.b);
      samples.push_back(std::move(sm));
    }
  }
  CHECK_CUDA(launch_with(hc));
  CHECK_CUDA(cudaDeviceSynchronize());
  for (Sample& sm : samples) {
    const std::vector<uint8_t> before_p = sm.p, before_b = sm.b;
    OptimSlot hs{};
    hs.param = sm.p.data();
    hs.grad = sm.g.data();
    hs.buf1 = c.momentum ? sm.b.data() : nullptr;
    hs.numel = 8;
    hs.base = T.slots[sm.k].base + sm.i0;
    host_group(c, hs, hc);
    std::vector<uint8_t> dp, db;
    fetch8(T.slots[sm.k].param, c.param, sm.i0, dp);
    if (c.momentum) fetch8(T.slots[sm.k].buf1, c.state, sm.i0, db);
    row.checked += 8;
    for (int j = 0; j < 8; ++j) {
      const int pb = bytes_of(c.param), sb = bytes_of(c.state);
      bool bad = std::memcmp(dp.data() + j * pb, sm.p.data() + j * pb, pb) != 0;
      if (c.momentum) bad = bad || std::memcmp(db.data() + j * sb, sm.b.data() + j * sb, sb) != 0;
      row.mismatched += bad;
      row.changed += std::memcmp(before_p.data() + j * pb, sm.p.data() + j * pb, pb) != 0;  // the check's power
    }
  }

  row.ms = median_ms(launch, 3, iters, 200.0);
  row.bytes = int64_t(tensors) * per * (2 * bytes_of(c.param) + bytes_of(c.grad) + (c.momentum ? 2 * bytes_of(c.state) : 0));
  row.gbps = row.bytes / (row.ms * 1e-3) / 1e9;
  for (void* p : T.owned) CHECK_CUDA(cudaFree(p));
  CHECK_CUDA(cudaFree(d_slots));
  CHECK_CUDA(cudaFree(d_prefix));
  return row;
}

}  // namespace

// The integer value of argument `name`, or exit 2 with a message naming it.
int64_t int_arg(const std::string& name, const std::string& v, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || n < lo || n > hi) {
    std::fprintf(stderr, "%s: expected an integer in [%lld, %lld]; got '%s'\n", name.c_str(), (long long)lo,
                 (long long)hi, v.c_str());
    std::exit(2);
  }
  return n;
}

int main(int argc, char** argv) {
  std::string cases = "sgd-e4m3,sgd-momentum-e4m3,sgd-bf16,sgd-momentum-bf16", out;
  int64_t elements = 768'000'000;
  int tensors = 4, iters = 15, check_groups = 64;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: missing value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--cases") cases = next();
    else if (a == "--elements") elements = int_arg(a, next(), 1, int64_t(1) << 40);
    else if (a == "--tensors") tensors = int(int_arg(a, next(), 1, 1024));
    else if (a == "--iters") iters = int(int_arg(a, next(), 1, 100000));
    else if (a == "--check-groups") check_groups = int(int_arg(a, next(), 4, 1 << 20));
    else if (a == "--out") out = next();
    else {
      std::fprintf(stderr, "unknown argument %s (expected --cases, --elements, --tensors, --iters, --check-groups, --out)\n",
                   a.c_str());
      return 2;
    }
  }
  if (elements < int64_t(tensors) * 8 * check_groups) {
    std::fprintf(stderr, "--elements must be at least 8 x --tensors x --check-groups = %lld; got %lld\n",
                 (long long)(int64_t(tensors) * 8 * check_groups), (long long)elements);
    return 2;
  }
  std::vector<const Case*> chosen;
  for (size_t start = 0; start <= cases.size();) {
    const size_t end = std::min(cases.find(',', start), cases.size());
    const std::string name = cases.substr(start, end - start);
    start = end + 1;
    if (name.empty()) continue;
    const Case* c = nullptr;
    for (const Case& k : kCases)
      if (name == k.name) c = &k;
    if (c == nullptr) {
      std::fprintf(stderr, "--cases: unknown case '%s' (expected sgd-e4m3, sgd-momentum-e4m3, sgd-bf16, "
                           "sgd-momentum-bf16)\n", name.c_str());
      return 2;
    }
    chosen.push_back(c);
  }
  FILE* f = nullptr;
  if (!out.empty() && (f = std::fopen(out.c_str(), "w")) == nullptr) {  // (before any timing)
    std::fprintf(stderr, "--out: cannot open %s for writing\n", out.c_str());
    return 2;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  // The copy reference: a 4 GiB buffer, bytes read + written.
  const size_t copy_bytes = size_t(1) << 32;
  void *src = nullptr, *dst = nullptr;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  CHECK_CUDA(cudaMemset(src, 1, copy_bytes));
  const double copy_ms =
      median_ms([&] { return cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, 0); }, 3, iters, 200.0);
  const double copy_gbps = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(dst));
  std::printf("%s: copy %.0f GB/s\n", prop.name, copy_gbps);
  std::vector<Row> rows;
  bool ok = true;
  for (const Case* c : chosen) {
    const Row r = run_case(*c, elements, tensors, iters, check_groups);
    ok = ok && r.mismatched == 0;
    std::printf("%-20s %8.3f ms %7.0f GB/s (%.1f%% of copy); check at lr 10: %lld of %lld elements differ from the "
                "host rule (the step changed %lld of the parameter codes)\n",
                r.name.c_str(), r.ms, r.gbps, 100 * r.gbps / copy_gbps, (long long)r.mismatched, (long long)r.checked,
                (long long)r.changed);
    rows.push_back(r);
  }
  if (f != nullptr) {
    std::fprintf(f, "{\"device\": \"%s\", \"elements\": %lld, \"tensors\": %d, \"iters\": %d, \"copy_GBps\": %.1f, "
                    "\"cases\": [", prop.name, (long long)elements, tensors, iters, copy_gbps);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f, "%s\n {\"case\": \"%s\", \"ms\": %.4f, \"bytes_per_step\": %lld, \"GBps\": %.1f, "
                      "\"fraction_of_copy\": %.4f, \"checked_elements\": %lld, \"mismatched_elements\": %lld, "
                      "\"check_changed_codes\": %lld}",
                   i ? "," : "", r.name.c_str(), r.ms, (long long)r.bytes, r.gbps, r.gbps / copy_gbps,
                   (long long)r.checked, (long long)r.mismatched, (long long)r.changed);
    }
    std::fprintf(f, "\n]}\n");
    std::fclose(f);
  }
  return ok ? 0 : 3;  // (1: a CUDA call failed, 2: bad arguments)
}
