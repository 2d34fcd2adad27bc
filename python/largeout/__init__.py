"""largeout: huge output layers for PyTorch.

Group-shared fixed fan-in sparse layers, low-precision training and fused
linear + loss for extreme multi-label classification and large-vocabulary heads.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.largeout.*)
from . import _ops  # noqa: F401  (fake kernels and autograd formulas)
from . import functional, kernels, nn, optim, reference
from ._build import build_info
from .precision import stochastic_round

__version__ = "0.1.0"

__all__ = ["build_info", "functional", "kernels", "nn", "optim", "reference", "stochastic_round", "__version__"]
