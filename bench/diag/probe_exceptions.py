"""Diagnostic: which C++ exceptions thrown from largeout's native ops crash this
process? Run each case in a fresh interpreter: python probe_exceptions.py CASE."""
import os
import subprocess
import sys

CASES = {
    "torch_error": "torch.mm(torch.ones(2, 3), torch.ones(2, 3))",
    "ours_type_error": "ops.group_sparse_linear(x, w.double(), i, b, 16)",
    "ours_error": "ops.group_sparse_linear(x, w, i[:-1], b, 16)",
    "ours_error_group": "ops.group_sparse_linear(x, w, i, b, 5)",
}
PRE = """
import torch, largeout
ops = torch.ops.largeout
x = torch.randn(4, 64); w = torch.randn(40, 16); b = torch.randn(40)
i = largeout.nn.random_group_indices(3, 64, 16)
"""

if len(sys.argv) > 1:
    exec(PRE)
    try:
        exec(CASES[sys.argv[1]])
        print("no exception")
    except Exception as e:  # noqa: BLE001
        print("raised", type(e).__name__, str(e).splitlines()[0][:100])
    sys.exit(0)

for env_extra in ({}, {"TORCH_SHOW_CPP_STACKTRACES": "1"}):
    for name in CASES:
        env = dict(os.environ, **env_extra)
        r = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, env=env)
        print(f"{name:18s} {env_extra!s:40s} rc={r.returncode:4d} {r.stdout.strip()[:120]}")
