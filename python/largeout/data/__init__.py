"""XMC data: readers and writers for the usual dataset files, and a synthetic dataset.

- :func:`read_xc` / :func:`write_xc`: Extreme Classification Repository
  bag-of-words files (``N D L`` header, ``l1,l2 f:v f:v`` lines), plain or ``.gz``.
- :func:`read_sparse_matrix`: ``N L`` header + ``index:value`` lines (``trn_X_Y.txt``).
- :func:`read_jsonl`: raw-text datasets, one JSON object per line.
- :func:`synthetic` / :func:`train_test_split`: a deterministic power-law dataset.
- :func:`prepare_dataset` (module :mod:`largeout.data.prepare`): real datasets from
  Debian packages (``wordnet``, ``go-mf``, ``go-bp``) converted to train/test files.

Matrices are scipy CSR, float32. Malformed files raise :class:`DataFormatError`
(a ``ValueError``) naming the file and line.
"""

from .formats import DataFormatError, read_jsonl, read_sparse_matrix, read_xc, write_xc
from .synthetic import synthetic, train_test_split
from .prepare import prepare as prepare_dataset  # the name `prepare` stays the submodule

__all__ = [
    "DataFormatError",
    "prepare_dataset",
    "read_jsonl",
    "read_sparse_matrix",
    "read_xc",
    "synthetic",
    "train_test_split",
    "write_xc",
]
