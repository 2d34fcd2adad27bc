"""The README's usage example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    text = README.read_text()
    use = text[text.index("## Use") :]
    block = re.search(r"```python\n(.*?)```", use, re.S).group(1)
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    assert tuple(scope["logits"].shape) == (4, 670_091)
    assert scope["head"].weight.grad is not None
    assert scope["back"].weight.shape == (1000, 768)


def test_readme_low_precision_example_runs():
    text = README.read_text()
    part = text[text.index("### Low precision") :]
    block = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    import torch

    assert scope["y"].dtype == torch.float8_e4m3fn and scope["y"].shape == (1000,)
    head, opt = scope["head"], scope["opt"]
    x = torch.randn(2, 768, dtype=torch.bfloat16)
    head(x).float().logsumexp(-1).sum().backward()
    assert head.weight.grad.dtype == torch.bfloat16
    before = head.weight.detach().view(torch.uint8).clone()
    opt.step()
    assert head.weight.dtype == torch.float8_e4m3fn and not torch.equal(before, head.weight.view(torch.uint8))
