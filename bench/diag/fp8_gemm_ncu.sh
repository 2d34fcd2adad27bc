#!/usr/bin/env bash
# Nsight Compute of the FP8 layer's GEMM against the bf16 cuBLAS GEMM at the issue-5 shape
# (B=512, H=768, L=2,812,288), one call of each (session 49: which unit bounds the FP8
# forward: DRAM, L2, the tensor pipe or issue). Writes $OUT/ncu_fp8_vs_bf16{.ncu-rep,_details.txt}.
#
#   OUT=dir bash bench/diag/fp8_gemm_ncu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT}"
cat > /tmp/fp8_ncu_one.py <<'EOF'
import torch
from largeout.nn import fp8 as f
B, H, L = 512, 768, 2_812_288
x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16)
w = (torch.randn(L, H, device="cuda") * 0.05).to(torch.float8_e4m3fn)
wb = w.to(torch.bfloat16)
bias = torch.randn(L, device="cuda", dtype=torch.bfloat16)
q, sx = f.quantize(x, False)
for _ in range(3):
    torch.ops.largeout.fp8_gemm(q, w, sx, bias, -1)
    torch.nn.functional.linear(x, wb, bias)
torch.cuda.synchronize()
torch.cuda.profiler.start()
torch.ops.largeout.fp8_gemm(q, w, sx, bias, -1)
torch.nn.functional.linear(x, wb, bias)
torch.cuda.synchronize()
torch.cuda.profiler.stop()
EOF
timeout "${NCU_TIMEOUT:-240}" ncu --profile-from-start off --clock-control none \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section LaunchStats --section Occupancy --section WarpStateStats \
  -o "$OUT/ncu_fp8_vs_bf16" -f python3 /tmp/fp8_ncu_one.py > "$OUT/ncu_fp8_vs_bf16.log" 2>&1 || echo "ncu exit $?"
ncu -i "$OUT/ncu_fp8_vs_bf16.ncu-rep" --page details > "$OUT/ncu_fp8_vs_bf16_details.txt" 2>&1 || true
grep -E "device_kernel|gemm|nvjet|Duration|DRAM Throughput|Memory Throughput|L2 Cache Throughput|Compute \(SM\)|SM Busy|Issue Slots|Executed Ipc|Registers|Achieved Occupancy" \
  "$OUT/ncu_fp8_vs_bf16_details.txt" | head -60
