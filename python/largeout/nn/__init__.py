"""Drop-in modules."""

from .ddp import DistributedDataParallel
from .group_sparse import GroupSparseLinear, random_group_indices
from .linear import Linear

__all__ = ["DistributedDataParallel", "GroupSparseLinear", "Linear", "random_group_indices"]
