#!/usr/bin/env bash
# Diagnostic run for the exception crash (see probe_exceptions.py).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/cutlass .whl/nvidia_cutlass-*.whl || exit 1
export CUTLASS_DIR=/tmp/cutlass/cutlass_library/source
LARGEOUT_CUDA=on python3 -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python3 bench/diag/probe_exceptions.py 2>&1 | tee "$OUT/probe.log"
SO=$(python3 -c "import largeout._C as m; print(m.__file__)")
LIBC10=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libc10.so'))")
{ echo "== ldd"; ldd "$SO"; echo "== our dynamic symbols (c10 Error typeinfo/vtable)"; nm -D "$SO" | grep -E "ZT[IVS]N3c10.*Error" ;
  echo "== libc10 exports"; nm -D --defined-only "$LIBC10" | grep -E "ZT[IVS]N3c10(5Error|9TypeError|10ValueError)E";
  echo "== readelf notes/flags"; readelf -d "$SO" | head -30; } > "$OUT/symbols.log" 2>&1
tail -25 "$OUT/symbols.log"
cat > /tmp/gdbcmds <<'G'
set pagination off
run
bt 25
G
timeout 120 cuda-gdb -batch -x /tmp/gdbcmds --args python3 bench/diag/probe_exceptions.py ours_error > "$OUT/gdb.log" 2>&1
grep -E "^#|SIG" "$OUT/gdb.log" | head -30
{ echo "== g++ specs mentioning static"; g++ -dumpspecs | grep -n -i "static" | head; echo "== which g++"; which g++ c++;
  echo "== exported std:: symbols in _C"; nm -D --defined-only "$SO" | grep -c " _ZNS"; } > "$OUT/toolchain.log" 2>&1
cat "$OUT/toolchain.log"
