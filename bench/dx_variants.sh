#!/usr/bin/env bash
# Experiment: time the dx variants (workspace accumulator, shared-memory tiles of 64,
# 32 and 16 rows) at the headline shapes. Expects largeout installed (run_device.sh).
set -uo pipefail
OUT=${OUT:-/tmp/out}
BIN=$(python3 -c "import largeout, os; print(os.path.join(os.path.dirname(largeout.__file__), 'bin', 'largeout_bench_group_sparse'))")
for rows in -1 64 32 16; do
  "$BIN" --B 512 --K 128 --G 32,128 --L 670208 --dx-rows $rows > "$OUT/dx_rows_$rows.json" || exit 1
  python3 -c "
import json; d = json.load(open('$OUT/dx_rows_$rows.json'))
for r in d['results']:
    print(f\"dx-rows $rows  G={r['G']:4d}  dx {r['dx_ms']:8.3f} ms  rows/cta {r['dx_rows_per_cta']} smem {r['dx_smem_accumulator']} splits {r['dx_splits']}\")"
done
