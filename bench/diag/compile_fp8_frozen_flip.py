"""Diagnosis (session 44): torch.compile(fullgraph=True) of an fp8 layer compiled with its weight
frozen, then the weight unfrozen: does the next call recompile (and refuse), or reuse the frozen
graph (the weight's gradient silently missing)? Prints what happens on this torch."""
import sys

import torch

sys.path.insert(0, "tests")
from test_fp8_grad_and_cast import make  # noqa: E402

torch._dynamo.reset()
torch.manual_seed(0)
m = make(sys.argv[1] if len(sys.argv) > 1 else "lin-e4m3-bf16", "cpu")
x = torch.randn(5, 64)
f = torch.compile(m, backend="aot_eager", fullgraph=True)
m.weight.requires_grad_(False)
f(x).sum().backward()
print("torch", torch.__version__, "frozen: weight.grad", m.weight.grad)
m.weight.requires_grad_(True)
for label, xi in (("x plain", x), ("x requires grad", x.clone().requires_grad_())):
    try:
        y = f(xi)
        y.sum().backward()
        print(label, ": no error; y.requires_grad", y.requires_grad, "weight.grad", None if m.weight.grad is None else m.weight.grad.dtype)
    except Exception as e:
        print(label, ": raised", type(e).__name__, str(e)[:120])
