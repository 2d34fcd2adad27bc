"""What largeout.nn.Linear's padded-path test sees while torch.compile traces it (session 48:
on the device's torch 2.11 the compiled layer took F.linear where torch 2.14 takes the op):
each condition of linear._pads_output as dynamo evaluates it at trace time."""

import os

import torch

os.environ["LARGEOUT_LINEAR_PAD"] = "1"
import largeout.nn.linear as lin  # noqa: E402
from largeout.functional import transforms_active  # noqa: E402

print("torch", torch.__version__)
layer = lin.Linear(16, 21)


def conds(x):
    c = [torch.compiler.is_compiling(), torch.compiler.is_exporting(), transforms_active(),
         torch._C._are_functorch_transforms_active(),
         getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0,
         lin._pads_output(layer.weight, torch.float32)]
    return x + torch.tensor([float(v) for v in c])


names = ["is_compiling", "is_exporting", "transforms_active", "functorch", "forward_ad", "_pads_output"]
for backend in ("eager", "aot_eager"):
    torch._dynamo.reset()
    out = torch.compile(conds, backend=backend, fullgraph=True)(torch.zeros(6))
    print(backend, dict(zip(names, out.tolist())))
y = torch.compile(layer, backend="aot_eager", fullgraph=True)(torch.randn(3, 16))
print("compiled layer output strides", y.stride(), y.grad_fn)
