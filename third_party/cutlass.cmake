# Locate CUTLASS headers: CUTLASS_DIR (a source tree with include/cutlass) or the
# pinned PyPI package nvidia-cutlass==4.2.0.0, which ships them under
# cutlass_library/source/include. Sets CUTLASS_INCLUDE_DIR and CUTLASS_VERSION.
set(LARGEOUT_CUTLASS_PIN "4.2.0.0")
if(NOT CUTLASS_DIR AND DEFINED ENV{CUTLASS_DIR})
  set(CUTLASS_DIR "$ENV{CUTLASS_DIR}")
endif()
if(CUTLASS_DIR)
  set(CUTLASS_INCLUDE_DIR "${CUTLASS_DIR}/include")
else()
  # find_spec locates the package without importing it (its imports need cuda-python).
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c [=[
import importlib.util, os
s = importlib.util.find_spec("cutlass_library")
print(os.path.join(os.path.dirname(s.origin), "source", "include") if s else "")
]=]
    OUTPUT_VARIABLE CUTLASS_INCLUDE_DIR
    OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(NOT EXISTS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h")
  message(FATAL_ERROR
    "CUTLASS headers not found (looked in '${CUTLASS_INCLUDE_DIR}'). Install the pinned package "
    "with 'pip install --no-deps nvidia-cutlass==${LARGEOUT_CUTLASS_PIN}', or set CUTLASS_DIR to a "
    "CUTLASS source tree, or build without CUDA (LARGEOUT_CUDA=off).")
endif()
file(STRINGS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h" _cv REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) [0-9]+")
string(REGEX MATCH "MAJOR ([0-9]+)" _m "${_cv}")
set(_maj "${CMAKE_MATCH_1}")
string(REGEX MATCH "MINOR ([0-9]+)" _m "${_cv}")
set(_min "${CMAKE_MATCH_1}")
string(REGEX MATCH "PATCH ([0-9]+)" _m "${_cv}")
set(CUTLASS_VERSION "${_maj}.${_min}.${CMAKE_MATCH_1}")
