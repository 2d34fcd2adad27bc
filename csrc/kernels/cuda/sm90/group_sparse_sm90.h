// Hopper (sm_90a) kernels of the group-shared fixed fan-in layer (wgmma, TMA,
// warp-specialized pipelines). The generic launchers call these when the device is
// sm_90 and the problem is covered (the *_supported functions); builds without the
// 90a target get the stubs below.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cuda/group_sparse_cuda.h"

namespace largeout::cuda::sm90 {

#ifdef LARGEOUT_WITH_SM90
bool fwd_supported(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
cudaError_t fwd(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev, const void* x, const void* weight,
                const int32_t* indices, const void* bias, void* y, cudaStream_t stream);
// Forward launches of G = 128 layers through the G = 64 kernel (LARGEOUT_SM90_FWD_G128_AS_64)
// since the process started.
int64_t fwd_g128_as_64_launches();

// fp8 weights (e4m3fn where e4m3, else e5m2; times row_scale[l] where row_scale is not
// null) with bf16 x, dY and results: the forward and dx (v3, or v2 where v3 does not apply;
// not v1) upcast the weight inside the kernel, to the values of largeout's fp8_to_bf16 op
// (so the results are the bf16 kernels' on the upcast weight). dx_fp8 takes dx_layout's
// splits and workspace.
bool fwd_fp8_supported(const GroupSparseShape& s, const DeviceInfo& dev);
cudaError_t fwd_fp8(bool e4m3, const GroupSparseShape& s, const DeviceInfo& dev, const void* x, const void* weight,
                    const float* row_scale, const int32_t* indices, const void* bias, void* y, cudaStream_t stream);
bool dx_fp8_supported(const GroupSparseShape& s, const DeviceInfo& dev);
cudaError_t dx_fp8(bool e4m3, const GroupSparseShape& s, const DeviceInfo& dev, int64_t splits, const void* dy,
                   const void* weight, const float* row_scale, const int32_t* indices, void* dx, void* workspace,
                   cudaStream_t stream);

bool dw_supported(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
int64_t dw_workspace_bytes(DType dtype, const GroupSparseShape& s);
// dW and dx launches through row classes (dY's row stride not a multiple of 8) since the process started.
int64_t dw_row_class_launches();
int64_t dx_row_class_launches();
cudaError_t dw(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev, const void* dy, const void* x,
               const int32_t* indices, void* dweight, void* dbias, void* workspace, cudaStream_t stream);

bool dx_supported(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
// Group splits per batch tile and the fp32 workspace they need ([splits, B, H]; none for 1 split).
void dx_layout(const GroupSparseShape& s, const DeviceInfo& dev, int64_t* splits, int64_t* workspace_bytes);
cudaError_t dx(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev, int64_t splits, const void* dy,
               const void* weight, const int32_t* indices, void* dx, void* workspace, cudaStream_t stream);
// Whether dx (v2) and dW (v2) read dY by TMA for this shape, with s.dy_ld() as its row
// stride: a multiple of 8 (then dY may be a row-padded view, [B, L] inside [B, ld]), or not,
// through row classes (16-bit weights; the layer's backward then keeps dY unpadded).
bool dx_tma_supported(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
bool dw_tma_supported(DType dtype, const GroupSparseShape& s, const DeviceInfo& dev);
#else
inline bool dx_tma_supported(DType, const GroupSparseShape&, const DeviceInfo&) { return false; }
inline bool dw_tma_supported(DType, const GroupSparseShape&, const DeviceInfo&) { return false; }
inline bool fwd_supported(DType, const GroupSparseShape&, const DeviceInfo&) { return false; }
inline int64_t fwd_g128_as_64_launches() { return 0; }
inline cudaError_t fwd(DType, const GroupSparseShape&, const DeviceInfo&, const void*, const void*, const int32_t*,
                       const void*, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
inline bool fwd_fp8_supported(const GroupSparseShape&, const DeviceInfo&) { return false; }
inline cudaError_t fwd_fp8(bool, const GroupSparseShape&, const DeviceInfo&, const void*, const void*, const float*,
                           const int32_t*, const void*, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
inline bool dx_fp8_supported(const GroupSparseShape&, const DeviceInfo&) { return false; }
inline cudaError_t dx_fp8(bool, const GroupSparseShape&, const DeviceInfo&, int64_t, const void*, const void*,
                          const float*, const int32_t*, void*, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
inline bool dw_supported(DType, const GroupSparseShape&, const DeviceInfo&) { return false; }
inline int64_t dw_workspace_bytes(DType, const GroupSparseShape&) { return 0; }
inline int64_t dw_row_class_launches() { return 0; }
inline int64_t dx_row_class_launches() { return 0; }
inline cudaError_t dw(DType, const GroupSparseShape&, const DeviceInfo&, const void*, const void*, const int32_t*,
                      void*, void*, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
inline bool dx_supported(DType, const GroupSparseShape&, const DeviceInfo&) { return false; }
inline void dx_layout(const GroupSparseShape&, const DeviceInfo&, int64_t* splits, int64_t* workspace_bytes) {
  *splits = 1;
  *workspace_bytes = 0;
}
inline cudaError_t dx(DType, const GroupSparseShape&, const DeviceInfo&, int64_t, const void*, const void*,
                      const int32_t*, void*, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
#endif

}  // namespace largeout::cuda::sm90
