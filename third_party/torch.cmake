# Locate torch's headers and libraries through the Python interpreter that
# builds the extension (the torch it will run against). Sets:
#   TORCH_VERSION, TORCH_CUDA_VERSION (empty for CPU builds), TORCH_INCLUDE_DIRS,
#   TORCH_DEFINITIONS, TORCH_CPU_LIBRARIES, TORCH_CUDA_LIBRARIES
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c [=[
import os, torch
from torch.utils import cpp_extension as ce
lib = os.path.join(os.path.dirname(torch.__file__), "lib")
print(torch.__version__.split("+")[0])
print(torch.version.cuda or "")
print(",".join(p for p in ce.include_paths() if os.path.isdir(p)))
print(lib)
print(int(torch.compiled_with_cxx11_abi()))
]=]
  OUTPUT_VARIABLE _torch_out
  ERROR_VARIABLE _torch_err
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "largeout needs torch installed in the Python that builds it (${Python_EXECUTABLE}); "
    "build with 'pip install --no-build-isolation .' after installing torch. Error:\n${_torch_err}")
endif()
string(REPLACE "\n" ";" _torch_lines "${_torch_out}")
list(GET _torch_lines 0 TORCH_VERSION)
list(GET _torch_lines 1 TORCH_CUDA_VERSION)
list(GET _torch_lines 2 _torch_inc)
list(GET _torch_lines 3 TORCH_LIB_DIR)
list(GET _torch_lines 4 _torch_abi)
string(REPLACE "," ";" TORCH_INCLUDE_DIRS "${_torch_inc}")
set(TORCH_DEFINITIONS _GLIBCXX_USE_CXX11_ABI=${_torch_abi})
set(TORCH_CPU_LIBRARIES
  "${TORCH_LIB_DIR}/libtorch.so" "${TORCH_LIB_DIR}/libtorch_cpu.so" "${TORCH_LIB_DIR}/libc10.so")
set(TORCH_CUDA_LIBRARIES
  "${TORCH_LIB_DIR}/libtorch_cuda.so" "${TORCH_LIB_DIR}/libc10_cuda.so")
message(STATUS "largeout: torch ${TORCH_VERSION} (CUDA '${TORCH_CUDA_VERSION}') at ${TORCH_LIB_DIR}")
