"""One launch of each Hopper kernel at a given shape, for Nsight Compute:

    ncu --clock-control none -k regex:sm90 --section ... python bench/profile_sm90.py --G 32

Runs forward, dx and dW once after a warm-up (random inputs, bf16)."""

import argparse

import torch

import largeout  # noqa: F401
from largeout.nn import random_group_indices

p = argparse.ArgumentParser()
p.add_argument("--B", type=int, default=512)
p.add_argument("--H", type=int, default=768)
p.add_argument("--L", type=int, default=670_208)
p.add_argument("--K", type=int, default=128)
p.add_argument("--G", type=int, default=32)
a = p.parse_args()
dt = torch.bfloat16
x = torch.randn(a.B, a.H, device="cuda", dtype=dt)
w = torch.randn(a.L, a.K, device="cuda", dtype=dt) / a.K**0.5
b = torch.randn(a.L, device="cuda", dtype=dt)
idx = random_group_indices(-(-a.L // a.G), a.H, a.K, generator=torch.Generator().manual_seed(0)).cuda()
dy = torch.randn(a.B, a.L, device="cuda", dtype=dt)
ops = torch.ops.largeout
for _ in range(2):
    ops.group_sparse_linear(x, w, idx, b, a.G)
    ops.group_sparse_linear_backward_input(dy, w, idx, a.G, a.H)
    ops.group_sparse_linear_backward_weight(dy, x, idx, a.G)
torch.cuda.synchronize()
print(largeout.kernels.launch_counts())
