// The device guard of largeout's CUDA ops.
#pragma once
#ifdef LARGEOUT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

namespace largeout {

// c10::cuda::CUDAGuard, then the device's primary context made current on the calling
// thread. CUDAGuard sets the device only where it differs from the thread's current one, so
// on a fresh thread (autograd's device thread when our backward is its first CUDA work, or
// a user's thread) no context was current, and the Hopper kernels' function-attribute calls
// and launches failed with cudaErrorInvalidValue (measured on an H200, CUDA 13.0).
class DeviceGuard {
 public:
  explicit DeviceGuard(const c10::Device& device) : guard_(device) {
    const cudaError_t e = cudaSetDevice(device.index());
    TORCH_CHECK(e == cudaSuccess, "largeout: cudaSetDevice(", int(device.index()), ") failed: ",
                cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  }

 private:
  c10::cuda::CUDAGuard guard_;
};

}  // namespace largeout
#endif
