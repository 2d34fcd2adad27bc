"""Diagnosis (session 44): the same flip with a plain torch.nn.Linear (no largeout code)."""
import torch

torch._dynamo.reset()
m = torch.nn.Linear(64, 40)
x = torch.randn(5, 64)
f = torch.compile(m, backend="aot_eager", fullgraph=True)
m.weight.requires_grad_(False)
f(x.clone().requires_grad_()).sum().backward()
m.weight.requires_grad_(True)
f(x.clone().requires_grad_()).sum().backward()
print("torch", torch.__version__, "plain nn.Linear: weight.grad after unfreezing:", m.weight.grad is not None)
