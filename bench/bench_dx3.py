"""dx of the group-sparse layer on Hopper: v2 (the default: dY tiles multiplied with each group's
weights, results scattered into an fp32 accumulator) against v3 (LARGEOUT_SM90_DX=v3: each
64-label unit's weights expanded to dense rows in shared memory and multiplied as a dense GEMM,
no scatter), next to cuBLAS's GEMM of equal FLOPs ([B, L] x [L, K]) and the full dense layer's dx
([B, L] x [L, H]) in the same run. Also the layer's training step (forward + backward through
autograd) with each, v3 probes (LARGEOUT_SM90_DX3_PROBE: 1 no scatter, 2 no MMAs, 3 the expanding
threads' previous mapping, same results; bf16) and the library's default choice (v3 for G <= 64
and K >= 128, else v2).

    python bench/bench_dx3.py --out dx3.json [--quick]"""

import argparse
import json
import os
import time

import torch

from bench_optim import timed  # (bench/ is the script's directory)
from largeout.nn import GroupSparseLinear, random_group_indices

HEADLINE = (512, 768, 670_208, 128, 32)


def ms(fn, reps=20):
    return timed(fn, reps)[0] * 1e3


def with_env(name, value, fn):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def shape_row(B, H, L, K, G, probes):
    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(L, K, device="cuda", dtype=dt, generator=g) / K**0.5
    dy = torch.randn(B, L, device="cuda", dtype=dt, generator=g)
    idx = random_group_indices(-(-L // G), H, K, generator=torch.Generator().manual_seed(0)).cuda()
    op = lambda: torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
    row = {"B": B, "H": H, "L": L, "K": K, "G": G}
    ref = with_env("LARGEOUT_SM90_DX", "v2", op).float()
    out3 = with_env("LARGEOUT_SM90_DX", "v3", op).float()
    row["max_abs_diff_v3_vs_v2"] = float((out3 - ref).abs().max())
    row["ref_abs_max"] = float(ref.abs().max())
    row["v2_ms"] = with_env("LARGEOUT_SM90_DX", "v2", lambda: ms(op))
    row["v3_ms"] = with_env("LARGEOUT_SM90_DX", "v3", lambda: ms(op))
    out3p = with_env("LARGEOUT_SM90_DX", "v3", lambda: with_env("LARGEOUT_SM90_DX3_PROBE", "3", op))
    row["probe3_bits_equal_v3"] = bool(torch.equal(out3p.float(), out3))
    for p in probes:
        row[f"v3_probe{p}_ms"] = with_env("LARGEOUT_SM90_DX", "v3",
                                          lambda: with_env("LARGEOUT_SM90_DX3_PROBE", str(p), lambda: ms(op)))
    row["default_ms"] = with_env("LARGEOUT_SM90_DX", None, lambda: ms(op))
    def gemm_ms(n):  # dY [B, L] x [L, n] on cuBLAS
        other = torch.randn(L, n, device="cuda", dtype=dt, generator=g)
        return ms(lambda: dy @ other)

    row["cublas_matched_ms"] = gemm_ms(K)
    row["cublas_dense_dx_ms"] = gemm_ms(H)
    for v in ("v2", "v3"):
        row[f"{v}_vs_matched"] = row[f"{v}_ms"] / row["cublas_matched_ms"]
    row["v3_TFLOPs_dense_equiv"] = 2 * B * L * H / row["v3_ms"] / 1e9
    return row


def step_row(B, H, L, K, G):
    torch.manual_seed(0)
    layer = GroupSparseLinear(H, L, fan_in=K, group_size=G, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(B, L, device="cuda", dtype=torch.bfloat16)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(dy)

    row = {"B": B, "H": H, "L": L, "K": K, "G": G}
    row["step_v2_ms"] = with_env("LARGEOUT_SM90_DX", "v2", lambda: ms(step, 10))
    row["step_v3_ms"] = with_env("LARGEOUT_SM90_DX", "v3", lambda: ms(step, 10))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    shapes = [HEADLINE, (512, 768, 670_208, 128, 64), (512, 768, 670_208, 128, 128), (512, 768, 670_208, 64, 32),
              (512, 768, 670_208, 256, 32), (128, 768, 670_208, 128, 32), (1024, 768, 670_208, 128, 32),
              (512, 768, 2_812_288, 128, 32), (512, 768, 131_072, 128, 32)]
    if a.quick:
        shapes = shapes[:3]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "git_commit": os.environ.get("LARGEOUT_GIT_COMMIT", ""), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "dx": [], "step": []}
    for s in shapes:
        r = shape_row(*s, probes=(1, 2, 3) if s == HEADLINE else (3,))
        print(json.dumps(r), flush=True)
        res["dx"].append(r)
        torch.cuda.empty_cache()
    for s in (HEADLINE, (512, 768, 670_208, 128, 64)):
        r = step_row(*s)
        print(json.dumps(r), flush=True)
        res["step"].append(r)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
