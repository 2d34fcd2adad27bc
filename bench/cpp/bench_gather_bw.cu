// How fast can an SM gather rows from an L2-resident tensor? The bound behind the Hopper dW
// kernel at small G (issue 4): per (group, 64 batch rows) it gathers the 128-byte segments of
// K rows of x^T [H, Bp] into shared memory, and at G = 32 those bytes are 4x dY's.
//
//   largeout_bench_gather_bw [--H 768] [--Bp 512] [--K 128] [--groups 20944] [--out FILE]
//
// Cases (one persistent CTA grid per case, CUDA-event medians of --iters launches):
//   gather_cp_async  dW's pattern: per (group, batch chunk of 64) K random rows' 128-byte
//                    segments by cp.async (16 bytes per thread and copy) into a ring of 8
//                    shared-memory stages, one commit group per stage, 128 threads per CTA
//                    (_t256, _t512: 256 or 512 threads issuing into the same ring);
//   gather_ldg       the same bytes by 16-byte global loads into registers (XOR-folded), with
//                    1 to 16 CTAs per SM (to find where more loads in flight stop helping);
//   l2_contiguous    the same number of 16-byte loads, contiguous over the L2-resident x^T
//                    (its first power-of-two number of 16-byte words, read again and again);
//   scatter_add_smem dx's scatter (v1/v2) alone: per (group, 32 batch rows) K x 32 fp32 adds into
//                    a shared-memory accumulator [H][32] at the group's rows ("bytes" = 4 per add);
//   dsmem_read_*     distributed shared memory (sm_90 on): each CTA of a cluster of 2, 4 or 8
//                    reads 64 KB 64 times from the next CTA's shared memory (remote) or its own
//                    (local); up to three 64 KB CTAs fit an SM, so peers may share one;
//   dram_stream      a 4 GiB buffer read once with 16-byte loads (DRAM read bandwidth).
// Bytes / time = GB/s. No library code: a standalone kernel file (static CUDA runtime).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_common.cuh"

namespace {

using largeout::bench::median_ms;

constexpr int kThreads = 128;
constexpr int kStages = 8;
constexpr int kChunk = 64;  // batch rows per stage: 128 bytes of each bf16 row

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Rows of x^T are Bp bf16 (2 * Bp bytes); a stage holds K rows x 128 bytes.
__global__ void __launch_bounds__(512) gather_cp_async(const uint8_t* __restrict__ xt, const int32_t* __restrict__ idx,
                                                            int Bp, int K, int groups, int* sink) {
  extern __shared__ uint4 smem[];
  const int chunks = Bp / kChunk, per_stage = K * 8;  // 16-byte copies per stage
  const int64_t row_bytes = int64_t(Bp) * 2;
  int stage = 0;
  for (int g = blockIdx.x; g < groups; g += gridDim.x) {
    for (int bc = 0; bc < chunks; ++bc) {
      uint4* st = smem + stage * per_stage;
      for (int c = threadIdx.x; c < per_stage; c += blockDim.x) {
        const int k = c >> 3, part = c & 7;
        cp_async16(st + c, xt + idx[int64_t(g) * K + k] * row_bytes + bc * 128 + part * 16);
      }
      cp_async_commit();
      cp_async_wait<kStages - 2>();
      stage = stage + 1 == kStages ? 0 : stage + 1;
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  if (threadIdx.x == 0 && smem[threadIdx.x].x == 0x12345678u) atomicAdd(sink, 1);  // keeps the copies
}

__global__ void __launch_bounds__(kThreads) gather_ldg(const uint8_t* __restrict__ xt, const int32_t* __restrict__ idx,
                                                       int Bp, int K, int groups, int* sink) {
  const int chunks = Bp / kChunk, per_stage = K * 8;
  const int64_t row_bytes = int64_t(Bp) * 2;
  uint32_t acc = 0;
  for (int g = blockIdx.x; g < groups; g += gridDim.x) {
    for (int bc = 0; bc < chunks; ++bc) {
#pragma unroll 8
      for (int c = threadIdx.x; c < per_stage; c += kThreads) {
        const int k = c >> 3, part = c & 7;
        const uint4 v = __ldcg(reinterpret_cast<const uint4*>(xt + idx[int64_t(g) * K + k] * row_bytes + bc * 128 + part * 16));
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
      }
    }
  }
  if (acc == 0x12345678u) atomicAdd(sink, 1);
}

// Reads wrap around the first `window` 16-byte words of x^T (a power of two).
__global__ void __launch_bounds__(kThreads) l2_contiguous(const uint4* __restrict__ xt, int64_t window, int64_t loads, int* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
#pragma unroll 8
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < loads; i += stride) {
    const uint4 v = __ldcg(xt + (i & (window - 1)));
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) atomicAdd(sink, 1);
}

__global__ void __launch_bounds__(kThreads) dram_stream(const uint4* __restrict__ buf, int64_t n16, int* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
#pragma unroll 8
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n16; i += stride) {
    const uint4 v = __ldcs(buf + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) atomicAdd(sink, 1);
}

// dx's scatter at small G (the v1/v2 design): per (group, 32 batch rows) K x 32 fp32 values
// added into an accumulator [H][32] in shared memory at the group's K rows (unique within a
// group, so no two threads of a group collide; a barrier separates groups). The values are
// made up in registers: this times the read-modify-write of shared memory, plus one
// (L1-cached) index load per warp and add.
__global__ void __launch_bounds__(256) scatter_add_smem(const int32_t* __restrict__ idx, int H, int K, int groups,
                                                        int batch_tiles, int* sink) {
  extern __shared__ float acc[];  // [H][32]
  for (int i = threadIdx.x; i < H * 32; i += 256) acc[i] = 0.f;
  __syncthreads();
  const int b = threadIdx.x & 31;
  float v = 1.f + threadIdx.x * 1e-3f;
  for (int t = blockIdx.x; t < groups * batch_tiles; t += gridDim.x) {
    const int g = t / batch_tiles;
    for (int k = threadIdx.x >> 5; k < K; k += 8) {
      float* a = acc + idx[int64_t(g) * K + k] * 32 + b;
      *a += v;
      v = v * 1.0001f;
    }
    __syncthreads();
  }
  if (threadIdx.x < H * 32 && acc[threadIdx.x] == 1234.5f) atomicAdd(sink, 1);
}

// Distributed shared memory (a dW design at small G would reduce fp32 partials across the
// CTAs of a cluster, each holding one batch slice of x^T): every CTA reads a 64 KB buffer,
// `reps` times, from the shared memory of the next CTA in its cluster (remote = 1) or from
// its own (remote = 0), 16 bytes per thread and load.
constexpr int kDsmemBytes = 64 * 1024;
__global__ void __launch_bounds__(256) dsmem_read(int reps, int remote, int* sink) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // (clusters: sm_90 on; the binary is built for every target arch)
  extern __shared__ uint4 dbuf[];
  constexpr int n = kDsmemBytes / 16;
  for (int i = threadIdx.x; i < n; i += 256) dbuf[i] = make_uint4(i, blockIdx.x, 1, 2);
  asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
  uint32_t rank = 0, nranks = 1;
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(nranks));
  const uint32_t local = static_cast<uint32_t>(__cvta_generic_to_shared(dbuf));
  uint32_t base = local;
  if (remote) asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(base) : "r"(local), "r"((rank + 1) % nranks));
  uint32_t acc = 0;
  for (int r = 0; r < reps; ++r) {
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += 256) {
      uint32_t a, b, c, d;
      if (remote)
        asm volatile("ld.shared::cluster.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "r"(base + i * 16));
      else
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "r"(base + i * 16));
      acc ^= a ^ b ^ c ^ d;
    }
  }
  // no CTA leaves while another may still read its shared memory
  asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
  if (acc == 0x12345678u) atomicAdd(sink, 1);
#endif
}

int arg_int(int argc, char** argv, const char* name, int dflt) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  return dflt;
}

}  // namespace

int main(int argc, char** argv) {
  const int H = arg_int(argc, argv, "--H", 768), Bp = arg_int(argc, argv, "--Bp", 512);
  const int K = arg_int(argc, argv, "--K", 128), groups = arg_int(argc, argv, "--groups", 20944);
  const int iters = arg_int(argc, argv, "--iters", 20);
  std::string out;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--out") == 0) out = argv[i + 1];
  if (H < K || Bp % kChunk != 0 || K < 1 || groups < 1) {
    std::fprintf(stderr, "need K <= H, Bp a multiple of %d, K >= 1, groups >= 1; got H=%d Bp=%d K=%d groups=%d\n", kChunk,
                 H, Bp, K, groups);
    return 2;
  }
  int dev = 0, sms = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));

  // x^T with nonzero contents; per group K distinct random rows (a partial Fisher-Yates).
  const size_t xt_bytes = size_t(H) * Bp * 2;
  std::vector<uint8_t> hx(xt_bytes);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  auto next = [&] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  for (auto& v : hx) v = uint8_t(next() | 1);
  std::vector<int32_t> hidx(size_t(groups) * K), perm(H);
  for (int g = 0; g < groups; ++g) {
    for (int i = 0; i < H; ++i) perm[i] = i;
    for (int k = 0; k < K; ++k) {
      const int j = k + int(next() % uint64_t(H - k));
      std::swap(perm[k], perm[j]);
      hidx[size_t(g) * K + k] = perm[k];
    }
  }
  uint8_t* xt = nullptr;
  int32_t* idx = nullptr;
  int* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&xt, xt_bytes));
  CHECK_CUDA(cudaMalloc(&idx, hidx.size() * 4));
  CHECK_CUDA(cudaMalloc(&sink, 4));
  CHECK_CUDA(cudaMemcpy(xt, hx.data(), xt_bytes, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(idx, hidx.data(), hidx.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(sink, 0, 4));

  const double gather_bytes = double(groups) * (Bp / kChunk) * K * 128.0;
  const int smem = kStages * K * 128;  // (above the per-block limit for K > 227: that case is skipped)
  const bool ring_fits = smem <= int(prop.sharedMemPerBlockOptin);
  if (ring_fits) CHECK_CUDA(cudaFuncSetAttribute(gather_cp_async, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  struct Row {
    std::string name;
    int ctas;
    double bytes, ms;
  };
  std::vector<Row> rows;
  for (int per_sm : {1, 2, 4, 8, 16}) {  // (16 x 128 threads: an SM's most)
    const int ctas = sms * per_sm;
    if (ring_fits && per_sm * smem <= int(prop.sharedMemPerMultiprocessor) - 1024 * per_sm)
      rows.push_back({"gather_cp_async", ctas, gather_bytes, median_ms([&] {
                        gather_cp_async<<<ctas, kThreads, smem>>>(xt, idx, Bp, K, groups, sink);
                        return cudaGetLastError();
                      }, 3, iters)});
    if (per_sm == 1 && ring_fits && smem <= int(prop.sharedMemPerMultiprocessor) - 1024)
      for (int threads : {256, 512})  // more warps issuing the copies into the same ring
        rows.push_back({"gather_cp_async_t" + std::to_string(threads), ctas, gather_bytes, median_ms([&] {
                          gather_cp_async<<<ctas, threads, smem>>>(xt, idx, Bp, K, groups, sink);
                          return cudaGetLastError();
                        }, 3, iters)});
    rows.push_back({"gather_ldg", ctas, gather_bytes,
                    median_ms([&] {
                      gather_ldg<<<ctas, kThreads>>>(xt, idx, Bp, K, groups, sink);
                      return cudaGetLastError();
                    }, 3, iters)});
  }
  const int64_t loads = int64_t(gather_bytes / 16);
  int64_t window = 1;
  while (window * 2 <= int64_t(xt_bytes / 16)) window *= 2;
  for (int per_sm : {4, 8}) {
    const int ctas = sms * per_sm;
    rows.push_back({"l2_contiguous", ctas, gather_bytes, median_ms([&] {
                      l2_contiguous<<<ctas, kThreads>>>(reinterpret_cast<const uint4*>(xt), window, loads, sink);
                      return cudaGetLastError();
                    }, 3, iters)});
  }
  const int acc_bytes = H * 32 * 4;
  CHECK_CUDA(cudaFuncSetAttribute(scatter_add_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, acc_bytes));
  const int batch_tiles = Bp / 32;
  rows.push_back({"scatter_add_smem", sms * 2, double(groups) * K * Bp * 4.0, median_ms([&] {
                    scatter_add_smem<<<sms * 2, 256, acc_bytes>>>(idx, H, K, groups, batch_tiles, sink);
                    return cudaGetLastError();
                  }, 3, iters)});
  CHECK_CUDA(cudaFuncSetAttribute(dsmem_read, cudaFuncAttributeMaxDynamicSharedMemorySize, kDsmemBytes));
  const int reps = 64;
  for (int cluster : {2, 4, 8}) {
    if (prop.major < 9) break;  // (thread block clusters: sm_90 on)
    for (int remote : {0, 1}) {
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(unsigned(sms / cluster * cluster));
      cfg.blockDim = dim3(256);
      cfg.dynamicSmemBytes = kDsmemBytes;
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = unsigned(cluster);
      attr.val.clusterDim.y = 1;
      attr.val.clusterDim.z = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      const int ctas = int(cfg.gridDim.x);
      rows.push_back({std::string(remote ? "dsmem_read_remote_c" : "dsmem_read_local_c") + std::to_string(cluster), ctas,
                      double(ctas) * reps * kDsmemBytes,
                      median_ms([&] { return cudaLaunchKernelEx(&cfg, dsmem_read, reps, remote, sink); }, 3, iters)});
    }
  }
  const size_t big = size_t(4) << 30;
  uint8_t* buf = nullptr;
  CHECK_CUDA(cudaMalloc(&buf, big));
  CHECK_CUDA(cudaMemset(buf, 1, big));
  rows.push_back({"dram_stream", sms * 8, double(big), median_ms([&] {
                    dram_stream<<<sms * 8, kThreads>>>(reinterpret_cast<const uint4*>(buf), int64_t(big / 16), sink);
                    return cudaGetLastError();
                  }, 3, iters)});
  CHECK_CUDA(cudaDeviceSynchronize());

  std::string json = "{\n \"device\": \"" + std::string(prop.name) + "\",\n \"H\": " + std::to_string(H) +
                     ", \"Bp\": " + std::to_string(Bp) + ", \"K\": " + std::to_string(K) +
                     ", \"groups\": " + std::to_string(groups) + ",\n \"cases\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const double gbps = r.bytes / (r.ms * 1e-3) / 1e9;
    std::printf("%-16s %4d CTAs  %8.3f ms  %8.0f GB/s\n", r.name.c_str(), r.ctas, r.ms, gbps);
    char line[256];
    std::snprintf(line, sizeof line, "  {\"case\": \"%s\", \"ctas\": %d, \"bytes\": %.0f, \"ms\": %.4f, \"GBps\": %.1f}%s\n",
                  r.name.c_str(), r.ctas, r.bytes, r.ms, gbps, i + 1 < rows.size() ? "," : "");
    json += line;
  }
  json += " ]\n}\n";
  if (!out.empty()) {
    FILE* f = std::fopen(out.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write --out %s\n", out.c_str());
      return 1;
    }
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  CHECK_CUDA(cudaFree(buf));
  CHECK_CUDA(cudaFree(xt));
  CHECK_CUDA(cudaFree(idx));
  CHECK_CUDA(cudaFree(sink));
  return 0;
}
