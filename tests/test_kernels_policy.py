"""largeout.kernels.path: its arguments are checked before any device is asked."""

import pytest
import torch

from largeout import kernels

GOOD = dict(pass_="forward", dtype=torch.bfloat16, batch=512, in_features=768, out_features=1000, fan_in=128,
            group_size=32)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(pass_="backward"), r"pass_ must be one of \('forward', 'input', 'weight'\); got 'backward'"),
        (dict(dtype=torch.int32), r"dtype must be one of .*; got torch.int32"),
        (dict(batch=-1), r"batch must be an integer >= 1; got -1"),
        (dict(in_features=0), r"in_features must be an integer >= 1; got 0"),
        (dict(out_features=2.5), r"out_features must be an integer >= 1; got 2.5"),
        (dict(fan_in=True), r"fan_in must be an integer >= 1; got True"),
        (dict(fan_in=1024), r"fan_in must be at most in_features = 768; got 1024"),
        (dict(group_size=0), r"group_size must be one of \(16, 32, 64, 128\); got 0"),
        (dict(group_size=48), r"group_size must be one of \(16, 32, 64, 128\); got 48"),
        (dict(group_size=32.0), r"group_size must be one of \(16, 32, 64, 128\); got 32.0"),
    ],
)
def test_path_names_a_bad_argument(change, pattern):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match="largeout.kernels.path: " + pattern):
        kernels.path(args.pop("pass_"), **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a CUDA device")
def test_path_without_a_cuda_device_says_so():
    args = dict(GOOD)
    with pytest.raises(RuntimeError, match=r"largeout.kernels.path: no CUDA device is available"):
        kernels.path(args.pop("pass_"), **args)
