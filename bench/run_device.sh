#!/usr/bin/env bash
# One call on the GPU machine: build largeout, run the whole test suite (GPU tests
# included) and the benchmarks. Logs and JSON go to $OUT.
#
#   bash bench/run_device.sh [full|quick|tests]   (tests: no benchmarks)
#
# Expects the nvidia-cutlass wheel under .whl/ (carried; see bench/README.md).
set -uo pipefail
OUT=${OUT:-/tmp/largeout_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
MODE=${1:-full}
TESTS=${TESTS:-tests}  # test paths (default: all)

{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/device.txt" 2>&1

# CUTLASS headers from the carried, pinned wheel.
python3 -m pip install -q --no-index --no-deps --target /tmp/cutlass .whl/nvidia_cutlass-*.whl || exit 1
export CUTLASS_DIR=/tmp/cutlass/cutlass_library/source

echo "== build"
start=$(date +%s)
LARGEOUT_CUDA=on python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
python3 -c "import largeout, json; print(json.dumps(largeout.build_info()))" || exit 1

{ g++ --version | head -1; nvcc --version | tail -1; cmake --version | head -1; } >> "$OUT/device.txt" 2>&1

echo "== tests: argument errors alone (fresh process)"
python3 -X faulthandler -m pytest $TESTS -q -p no:cacheprovider -k "bad or error or validate" 2>&1 | tail -4
echo "== tests: whole suite"
python3 -X faulthandler -m pytest $TESTS -q -ra -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
echo "== compute-sanitizer memcheck on the CUDA numeric tests"
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_group_sparse_op.py -q \
  -p no:cacheprovider -k "match_reference and cuda and not 1000 and not 4100" 2>&1 | tail -6 > "$OUT/memcheck.log"
echo "memcheck rc=${PIPESTATUS[0]}"; tail -4 "$OUT/memcheck.log"

echo "== benchmarks"
if [ "$MODE" = tests ]; then
  echo "(skipped: tests only)"
elif [ "$MODE" = quick ]; then
  python3 bench/bench_group_sparse.py --out "$OUT/group_sparse.json" 2>&1 | tee "$OUT/bench.log" | tail -30
else
  python3 bench/bench_group_sparse.py --B 128,512 --K 64,128,256 --G 32,128 --L 131072,670208 \
    --out "$OUT/group_sparse.json" 2>&1 | tee "$OUT/bench.log" | tail -60
fi
