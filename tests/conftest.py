import pytest
import torch

import largeout  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]

# ||out - ref|| / ||ref|| bounds against the float64 reference, by input dtype.
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "output has NaN/inf (unwritten or overflowed elements)"
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


@pytest.fixture
def poison():
    """New tensors from torch.empty (also inside largeout's ops) are filled with NaN,
    so an element a kernel fails to write shows up as NaN."""
    prev_alg = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(prev_alg)
    torch.utils.deterministic.fill_uninitialized_memory = prev_fill
