"""One Hopper pass at an odd L with contiguous rows (row classes where they apply) against a
float64 reference, in this process: run each pass in its own process, since an illegal
instruction ends the CUDA context.

    python bench/probe_row_classes.py forward|input|weight [B H L K G]

Prints "<pass> ok" or the largest error and exits 0 / 1."""

import sys

import torch

from largeout import kernels
from largeout import reference as ref
from largeout.nn import random_group_indices


def main() -> int:
    pass_ = sys.argv[1]
    B, H, L, K, G = (int(v) for v in sys.argv[2:7]) if len(sys.argv) > 2 else (64, 768, 4099, 128, 32)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(L, K, generator=gen, dtype=torch.float64) / K**0.5
    b = torch.randn(L, generator=gen, dtype=torch.float64)
    dy = torch.randn(B, L, generator=gen, dtype=torch.float64)
    idx = random_group_indices(-(-L // G), H, K, generator=gen)
    xc, wc, bc, dyc = (t.to("cuda", torch.bfloat16) for t in (x, w, b, dy))
    ic = idx.cuda()
    ops = torch.ops.largeout
    x64, w64, b64, dy64 = (t.to(torch.bfloat16).double() for t in (x, w, b, dy))
    if pass_ == "forward":
        got, want = ops.group_sparse_linear(xc, wc, ic, bc, G), ref.group_sparse_linear(x64, w64, idx, b64, G)
    elif pass_ == "input":
        got = ops.group_sparse_linear_backward_input(dyc, wc, ic, G, H)
        want = ref.group_sparse_linear_grads(x64, w64, idx, b64, G, dy64)[0]
    else:
        got = ops.group_sparse_linear_backward_weight(dyc, xc, ic, G)[0]
        want = ref.group_sparse_linear_grads(x64, w64, idx, b64, G, dy64)[1]
    torch.cuda.synchronize()
    err = float((got.double().cpu() - want).abs().max())
    scale = float(want.abs().max())
    rc = {p: kernels.dy_row_classes(p, torch.bfloat16, B, H, L, K, G) for p in ("input", "weight")}
    ok = err <= 0.02 * scale
    print(f"{pass_} B{B} L{L} K{K} G{G}: {'ok' if ok else 'WRONG'} (max error {err:.3g} of {scale:.3g}; row classes {rc})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
