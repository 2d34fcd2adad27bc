// Argument checks shared by several ops.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace largeout {

// A per-row scale: `name` must be a float32 [rows] tensor on `device` (the tensor it scales
// lives there). Returns a contiguous copy (the tensor itself when already contiguous).
inline at::Tensor check_row_scale_arg(const char* op, const char* name, const at::Tensor& scale, int64_t rows,
                                      const c10::Device& device) {
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, op, ": ", name, " must be float32; got ", scale.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == rows && scale.device() == device, op, ": ", name, " must be a [",
              rows, "] tensor on ", device, "; got shape ", scale.sizes(), " on ", scale.device());
  return scale.contiguous();
}

}  // namespace largeout
