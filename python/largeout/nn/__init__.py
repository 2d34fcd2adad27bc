"""Drop-in modules."""

from .group_sparse import GroupSparseLinear, random_group_indices

__all__ = ["GroupSparseLinear", "random_group_indices"]
