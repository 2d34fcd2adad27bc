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
