// Group-shared fixed fan-in linear layer: kernel-level API (no torch headers).
//
//   y[b, l] = bias[l] + sum_k weight[l, k] * x[b, indices[l / G, k]]
//
// x [B, H], weight [L, K], indices [ceil(L/G), K] int32, bias [L], y [B, L];
// all row-major and contiguous. The last group may be partial (L % G != 0).
#pragma once
#include <cstdint>
#include <functional>

namespace largeout {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

struct GroupSparseShape {
  int64_t batch = 0;         // B
  int64_t in_features = 0;   // H
  int64_t out_features = 0;  // L
  int64_t fan_in = 0;        // K
  int64_t group_size = 0;    // G
  // Row stride of dY in elements (the backward passes); 0: out_features (contiguous). Only
  // the Hopper kernels that load dY by TMA take another (ops check dy_tma_supported).
  int64_t grad_ld = 0;
  int64_t num_groups() const { return (out_features + group_size - 1) / group_size; }
  int64_t dy_ld() const { return grad_ld > 0 ? grad_ld : out_features; }
};

// Runs fn(begin, end) over [begin, end) in chunks of at least `grain`, possibly
// in parallel. The ops layer passes torch's intra-op thread pool.
using ChunkFn = std::function<void(int64_t, int64_t)>;
using ParallelFor = std::function<void(int64_t begin, int64_t end, int64_t grain, const ChunkFn& fn)>;

namespace cpu {
// y = forward(x). bias may be null.
void group_sparse_fwd(DType dtype, const GroupSparseShape& s, const void* x, const void* weight,
                      const int32_t* indices, const void* bias, void* y, const ParallelFor& pf);
// dx = scatter_add over indices of dy @ weight (deterministic: each row owned by one task).
void group_sparse_dx(DType dtype, const GroupSparseShape& s, const void* dy, const void* weight,
                     const int32_t* indices, void* dx, const ParallelFor& pf);
// dweight[l, k] = sum_b dy[b, l] x[b, idx[l/G, k]];  dbias[l] = sum_b dy[b, l].
void group_sparse_dw(DType dtype, const GroupSparseShape& s, const void* dy, const void* x,
                     const int32_t* indices, void* dweight, void* dbias, const ParallelFor& pf);
}  // namespace cpu

}  // namespace largeout
