"""Drop-in modules."""

from .group_sparse import GroupSparseLinear, random_group_indices
from .linear import Linear

__all__ = ["GroupSparseLinear", "Linear", "random_group_indices"]
