// What the C++ benchmark binaries share: a checked CUDA call and a CUDA-event median.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK_CUDA(expr)                                                                          \
  do {                                                                                            \
    cudaError_t err_ = (expr);                                                                    \
    if (err_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

namespace largeout::bench {

// Median milliseconds of `iters` calls of launch() (which enqueues work on the default stream
// and returns its cudaError_t), CUDA events around each, after `warmup` calls and then, where
// warmup_ms > 0, after further calls for about warmup_ms milliseconds (so that the clocks have
// settled to this launch's load whatever ran before; see bench/NOTES.md, session 31).
template <class F>
double median_ms(F&& launch, int warmup, int iters, double warmup_ms = 0) {
  for (int i = 0; i < warmup; ++i) CHECK_CUDA(launch());
  if (warmup_ms > 0) {
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    CHECK_CUDA(cudaEventRecord(a));
    CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float one = 0;
    CHECK_CUDA(cudaEventElapsedTime(&one, a, b));
    const double n = warmup_ms / std::max(double(one), 1e-3);
    for (int i = 0, m = int(std::min(n, 1e5)); i < m; ++i) CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventDestroy(a));
    CHECK_CUDA(cudaEventDestroy(b));
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> ev(2 * iters);
  for (auto& e : ev) CHECK_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(ev[2 * i]));
    CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(ev[2 * i + 1]));
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> t(iters);
  for (int i = 0; i < iters; ++i) CHECK_CUDA(cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]));
  for (auto& e : ev) CHECK_CUDA(cudaEventDestroy(e));
  std::sort(t.begin(), t.end());
  return iters % 2 ? t[iters / 2] : 0.5 * (t[iters / 2 - 1] + t[iters / 2]);
}

}  // namespace largeout::bench
