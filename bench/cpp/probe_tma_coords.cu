// Probe: does the bulk tensor copy engine (TMA) load and store a 2-D box whose innermost
// start coordinate is not a multiple of 16 bytes? One case per process (an illegal
// instruction ends the context):
//
//   probe_tma_coords load|store SWIZZLE(0|128) C0
//
// A bf16 tensor of 16 rows x 1000 columns (row stride 1024 elements) holds value(r, c); a
// box of 8 rows x 64 columns at (C0, 0) is loaded into shared memory and copied out (load),
// or written from shared memory (store) over a tensor of sentinels. Prints "ok" or the
// first mismatch and exits 0 / 1 (2: a CUDA error). Built and run by `run_device.sh tmaprobe`.
//
// On an H100 (session 26, bench/results/probe_tma_s26_h100.txt) every case with C0 = 0 was
// right and every other one (3, 997, -5; loads and stores, with and without swizzle) stopped
// with an illegal instruction: a box's innermost start must lie on 16 bytes, so a matrix whose
// rows are not 16-byte aligned cannot be tiled by TMA even through maps of 8-row classes with
// aligned bases and strides (bench/NOTES.md).
#include <cudaTypedefs.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/sm90/ptx.cuh"

using namespace largeout::cuda::sm90;

constexpr int kRows = 16, kCols = 1000, kLd = 1024, kBoxR = 8, kBoxC = 64;

#define CHECK(x)                                                                           \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      return 2;                                                                            \
    }                                                                                      \
  } while (0)

__global__ void probe(const __grid_constant__ CUtensorMap map, uint16_t* io, int c0, int store) {
  __shared__ __align__(1024) uint8_t tile[kBoxR * kBoxC * 2];
  __shared__ uint64_t bar;
  const int t = threadIdx.x;
  if (!store) {
    if (t == 0) {
      mbar_init(&bar, 1);
      fence_barrier_init();
      mbar_arrive_expect_tx(&bar, sizeof(tile));
      tma_load_2d(tile, &map, &bar, c0, 0);
    }
    __syncthreads();
    mbar_wait(&bar, 0);
    for (int i = t; i < int(sizeof(tile) / 2); i += blockDim.x) io[i] = reinterpret_cast<uint16_t*>(tile)[i];
  } else {
    for (int i = t; i < int(sizeof(tile) / 2); i += blockDim.x) reinterpret_cast<uint16_t*>(tile)[i] = io[i];
    fence_proxy_async();
    __syncthreads();
    if (t == 0) {
      tma_store_2d(&map, tile, c0, 0);
      bulk_commit();
      asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    }
  }
}

uint16_t value(int r, int c) { return uint16_t(0x3c00 + ((r * 131 + c * 7) & 0x3ff)); }

int main(int argc, char** argv) {
  if (argc != 4) {
    std::printf("usage: %s load|store 0|128 C0\n", argv[0]);
    return 2;
  }
  const bool store = std::strcmp(argv[1], "store") == 0;
  const int sw = std::atoi(argv[2]), c0 = std::atoi(argv[3]);
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q{};
  CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
  auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  uint16_t *g = nullptr, *io = nullptr;
  CHECK(cudaMalloc(&g, kRows * kLd * 2));
  CHECK(cudaMalloc(&io, kBoxR * kBoxC * 2));
  std::vector<uint16_t> h(kRows * kLd, 0xffff), box(kBoxR * kBoxC);
  if (!store)
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c) h[r * kLd + c] = value(r, c);
  CHECK(cudaMemcpy(g, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  // shared-memory position of logical (row r, column j) of the box
  auto pos = [&](int r, int j) { return r * kBoxC + ((((j / 8) ^ (sw == 128 ? r & 7 : 0)) * 8) + j % 8); };
  if (store) {
    for (int r = 0; r < kBoxR; ++r)
      for (int j = 0; j < kBoxC; ++j) box[pos(r, j)] = value(r, c0 + j);
    CHECK(cudaMemcpy(io, box.data(), box.size() * 2, cudaMemcpyHostToDevice));
  }
  CUtensorMap map;
  const cuuint64_t dims[2] = {kCols, kRows}, strides[1] = {kLd * 2};
  const cuuint32_t bdim[2] = {kBoxC, kBoxR}, estr[2] = {1, 1};
  const CUresult cr = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, g, dims, strides, bdim, estr,
                             CU_TENSOR_MAP_INTERLEAVE_NONE,
                             sw == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                             CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (cr != CUDA_SUCCESS) {
    std::printf("encode failed: %d\n", int(cr));
    return 2;
  }
  probe<<<1, 128>>>(map, io, c0, int(store));
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  if (!store) {
    CHECK(cudaMemcpy(box.data(), io, box.size() * 2, cudaMemcpyDeviceToHost));
    for (int r = 0; r < kBoxR; ++r)
      for (int j = 0; j < kBoxC; ++j) {
        const int c = c0 + j;
        const uint16_t want = (c >= 0 && c < kCols) ? value(r, c) : 0;
        if (box[pos(r, j)] != want) {
          std::printf("load sw%d c0=%d: mismatch at row %d col %d: %04x, want %04x\n", sw, c0, r, j, box[pos(r, j)], want);
          return 1;
        }
      }
  } else {
    CHECK(cudaMemcpy(h.data(), g, h.size() * 2, cudaMemcpyDeviceToHost));
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kLd; ++c) {
        const bool in = r < kBoxR && c >= c0 && c < c0 + kBoxC && c < kCols;
        const uint16_t want = in ? value(r, c) : 0xffff;
        if (h[r * kLd + c] != want) {
          std::printf("store sw%d c0=%d: mismatch at row %d col %d: %04x, want %04x\n", sw, c0, r, c, h[r * kLd + c], want);
          return 1;
        }
      }
  }
  std::printf("%s sw%d c0=%d: ok\n", argv[1], sw, c0);
  return 0;
}
