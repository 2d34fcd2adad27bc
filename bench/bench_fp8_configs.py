"""largeout's FP8 GEMM configurations against cuBLAS bf16 on the FP8 layer's forward shape.

    python bench/bench_fp8_configs.py --out bench/results/fp8_gemm_configs.json

Bare ``torch.ops.largeout.fp8_gemm`` (pre-quantized e4m3 input and weight, one scale, a bf16
bias, bf16 output) for every configuration, and ``F.linear`` on bf16 operands with the bias,
at B=512, H=768, L=2,812,288; CUDA-event medians of --iters calls, in --rounds passes (the
H100's clock drops as a run heats it: compare within a pass)."""
import json

import torch

import largeout
from bench_fp8 import shape_parser  # bench/ is on the path when run as a script
from bench_group_sparse import median_ms


def main(argv=None) -> int:
    ap = shape_parser(__doc__, L=2_812_288)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    B, H, L = args.B, args.H, args.L
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, H, device="cuda", generator=gen)
    scale = x.abs().max() / 448
    q, s = (x / scale).to(torch.float8_e4m3fn), scale.reshape(1).float()
    w = (torch.randn(L, H, device="cuda", generator=gen) / 8).to(torch.float8_e4m3fn)
    wb = torch.randn(L, H, device="cuda", generator=gen, dtype=torch.bfloat16)
    xb, bias = x.bfloat16(), torch.randn(L, device="cuda", dtype=torch.bfloat16)
    configs = list(torch.ops.largeout.fp8_gemm_configs())
    res = {"device": torch.cuda.get_device_name(), "largeout": largeout.build_info(), "B": B, "H": H, "L": L,
           "configs": configs, "method": __doc__, "ms": {}}
    for r in range(args.rounds):
        res["ms"][f"bf16_cublas_r{r}"] = median_ms(lambda: torch.nn.functional.linear(xb, wb, bias), 3, args.iters)
        for c in range(len(configs)):
            res["ms"][f"fp8_cfg{c}_r{r}"] = median_ms(lambda: torch.ops.largeout.fp8_gemm(q, w, s, bias, c), 3,
                                                      args.iters)
    print(json.dumps(res["ms"], indent=1))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
