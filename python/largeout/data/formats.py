"""Readers and writers for the usual XMC dataset files.

Every reader streams its file line by line (plain or gzip, chosen by a ``.gz``
suffix), parses the lines in chunks into compact numpy arrays and builds the scipy
CSR matrices at the end; no dense matrix and never the whole text is held in memory.
A malformed file raises :class:`DataFormatError` naming the file, the 1-based line
number and what is wrong, and nothing partial is returned.

Writers validate their arguments first and then write atomically: to a temporary
file in the destination's directory, renamed over the destination with
:func:`os.replace` only once everything is written, so a failure never leaves a
half-written (or a clobbered) file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import numbers
import os
import re
import tempfile
import warnings
import zlib
from array import array
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

__all__ = ["DataFormatError", "read_xc", "write_xc", "read_sparse_matrix", "read_jsonl"]

PathLike = Union[str, "os.PathLike[str]"]

# A chunk of lines is parsed at once when it reaches either bound.
_CHUNK_LINES = 1 << 15
_CHUNK_CHARS = 1 << 23
# Rows formatted at once by the writers.
_WRITE_ROWS = 1 << 12
# The most columns (features, labels) a matrix may have: scipy CSR with int32 indices.
_MAX_COLUMNS = 2**31 - 1

# Syntax of one token (the slow path's rules, which are the reference).
_SIGNED_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

# Fast path: byte classes of the feature text of a chunk.
_C_BAD, _C_SPACE, _C_DIGIT, _C_COLON, _C_OTHER = 0, 1, 2, 3, 4
_CLASS = np.zeros(256, dtype=np.uint8)
_CLASS[[ord(c) for c in " \t\n\r\v\f"]] = _C_SPACE
_CLASS[ord("0") : ord("9") + 1] = _C_DIGIT
_CLASS[ord(":")] = _C_COLON
_CLASS[[ord(c) for c in ".eE+-"]] = _C_OTHER
_DELETE_DIGITS_COMMAS = str.maketrans("", "", "0123456789,")


def _fromstring_raises() -> bool:
    """Whether ``np.fromstring`` raises on unparsable text (numpy >= 2.3) instead of
    warning and returning what it parsed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            np.fromstring("1 x", dtype=np.float64, sep=" ")
        except ValueError:
            return True
    return False


_FROMSTRING_RAISES = _fromstring_raises()


def _fromstring(text: str, sep: str) -> Optional[np.ndarray]:
    """All numbers of ``text`` as float64, or ``None`` if any part does not parse."""
    try:
        if _FROMSTRING_RAISES:
            return np.fromstring(text, dtype=np.float64, sep=sep)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return np.fromstring(text, dtype=np.float64, sep=sep)
    except (ValueError, DeprecationWarning):
        return None


class DataFormatError(ValueError):
    """A malformed data file: ``str(err)`` is ``"<path>, line <n>: <reason>"``.

    Attributes ``path``, ``lineno`` (1-based) and ``reason`` hold the parts."""

    def __init__(self, path: PathLike, lineno: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.lineno = int(lineno)
        self.reason = reason
        super().__init__(f"{self.path}, line {self.lineno}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.lineno, self.reason))


class _LineError(Exception):
    """A problem in one line, before the file and line number are attached."""


# ----------------------------------------------------------------------------------
# opening files


def _is_gz(path: PathLike) -> bool:
    return os.fspath(path).lower().endswith(".gz")


def _open_text(path: PathLike):
    if _is_gz(path):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, "r", encoding="utf-8-sig")


def _first_bad_utf8_line(path: PathLike) -> Tuple[int, str]:
    """The line number of the first line of ``path`` that is not valid UTF-8, and why
    (the text reader decodes a block at a time, so its error does not say which line)."""
    opener = gzip.open if _is_gz(path) else open
    lineno = 0
    with opener(path, "rb") as raw:
        for chunk in raw:  # (split at \n; the text reader also ends lines at \r and \r\n)
            body = chunk
            if body.endswith(b"\n"):
                body = body[:-2] if body.endswith(b"\r\n") else body[:-1]
            for line in re.split(rb"\r\n|\r|\n", body):
                lineno += 1
                try:
                    line.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    return lineno, e.reason
    return 0, "undecodable text"


def _lines(path: PathLike, f) -> Iterator[str]:
    """The lines of ``f``; a read or decode failure becomes a DataFormatError."""
    lineno = 0
    try:
        for lineno, line in enumerate(f, 1):
            yield line
    except UnicodeDecodeError as e:
        bad, reason = _first_bad_utf8_line(path)
        raise DataFormatError(path, bad or lineno + 1, f"not valid UTF-8 text ({reason or e.reason})") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a truncated or corrupt .gz
        raise DataFormatError(path, lineno + 1, f"corrupt gzip data: {e}") from None


def _read_header(path: PathLike, it: Iterator[str], names: Sequence[str]) -> Tuple[int, ...]:
    line = next(it, None)
    expected = " ".join(names)
    if line is None or not line.strip():
        raise DataFormatError(path, 1, f"missing header: expected '{expected}'")
    toks = line.split()
    if len(toks) != len(names) or not all(_SIGNED_INT_RE.fullmatch(t) for t in toks):
        raise DataFormatError(path, 1, f"bad header {line.strip()!r}: expected '{expected}' ({len(names)} integers)")
    if any(len(t.lstrip("+-")) > 20 for t in toks):  # (int() refuses > 4,300 digits; all such are too large)
        raise DataFormatError(path, 1, f"bad header {line.strip()[:80]!r}: a count has more than 20 digits")
    vals = tuple(int(t) for t in toks)
    for name, v in zip(names, vals):
        if v < 0:
            raise DataFormatError(path, 1, f"bad header {line.strip()!r}: {name} = {v} is negative")
    for name, v in zip(names[1:], vals[1:]):
        if v > _MAX_COLUMNS:
            raise DataFormatError(path, 1, f"bad header {line.strip()!r}: {name} = {v} is too large (at most 2^31 - 1)")
    return vals


# ----------------------------------------------------------------------------------
# chunk parsing


class _Rows:
    """Growing compact storage of sparse rows: per-row counts, column indices, values."""

    def __init__(self, with_values: bool) -> None:
        self.counts: list = []
        self.indices: list = []
        self.values: Optional[list] = [] if with_values else None

    def add(self, counts: np.ndarray, indices: np.ndarray, values: Optional[np.ndarray] = None) -> None:
        self.counts.append(counts.astype(np.int64, copy=False))
        self.indices.append(indices.astype(np.int32, copy=False))
        if self.values is not None:
            self.values.append(values.astype(np.float32, copy=False))

    def csr(self, num_rows: int, num_cols: int) -> sp.csr_matrix:
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        assert counts.size == num_rows
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        nnz = int(indptr[-1])
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int32)
        if self.values is not None:
            data = np.concatenate(self.values) if self.values else np.zeros(0, np.float32)
        else:
            data = np.ones(nnz, dtype=np.float32)
        if nnz < 2**31:
            indptr = indptr.astype(np.int32)
        m = sp.csr_matrix((data, indices, indptr), shape=(num_rows, num_cols), copy=False)
        m.has_canonical_format = True  # rows are sorted and free of duplicates by construction
        return m


def _canonical(counts: np.ndarray, idx: np.ndarray, ncols: int) -> Tuple[Optional[np.ndarray], int]:
    """Sort the column indices within each row.

    Returns ``(order, dup_row)``: ``order`` is the permutation to apply (``None`` if
    the rows are already sorted), ``dup_row`` the first row holding a repeated
    index (``-1`` if none)."""
    if idx.size < 2:
        return None, -1
    rows = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    keys = rows * max(int(ncols), 1) + idx.astype(np.int64)
    if bool((keys[1:] > keys[:-1]).all()):
        return None, -1
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size:
        return order, int(rows[order[dup]].min())
    return order, -1


def _split_line(line: str, with_labels: bool) -> Tuple[Optional[str], str]:
    """``(label head or None, feature part)`` of one example line."""
    if not with_labels:
        return None, line
    parts = line.split(None, 1)
    if not parts or ":" in parts[0]:
        return None, line
    return parts[0], (parts[1] if len(parts) > 1 else "")


def _pairs_syntax_ok(text: str, num_tokens: int) -> bool:
    """Whether ``text`` is ``num_tokens`` whitespace-separated tokens, each one
    ``digits:rest`` with a non-empty ``rest`` of characters ``0-9 . e E + -``.

    (Whether each ``rest`` is one well-formed number is then checked by parsing.)
    Vectorised over the bytes of the text."""
    if not text.isascii():
        return False
    b = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    n = b.size
    if n == 0:
        return num_tokens == 0
    c = _CLASS[b]
    if not c.all():  # a byte of class _C_BAD
        return False
    space = c == _C_SPACE
    token = ~space
    starts = np.empty(n, dtype=bool)  # first byte of a token
    starts[0] = token[0]
    np.logical_and(token[1:], space[:-1], out=starts[1:])
    lasts = np.empty(n, dtype=bool)  # last byte of a token
    lasts[-1] = token[-1]
    np.logical_and(token[:-1], space[1:], out=lasts[:-1])
    starts = np.flatnonzero(starts)
    lasts = np.flatnonzero(lasts)
    colons = np.flatnonzero(c == _C_COLON)
    if starts.size != num_tokens or colons.size != num_tokens:
        return False
    # colon k lies strictly inside token k (non-empty index and value): one per token
    if not (bool((starts < colons).all()) and bool((colons < lasts).all())):
        return False
    # the index part [start, colon) of each token is all digits
    mark = np.zeros(n, dtype=np.int8)
    mark[starts] = 1
    mark[colons] = -1
    in_index = np.cumsum(mark, dtype=np.int8).view(bool)
    return not bool((in_index & (c != _C_DIGIT)).any())


def _parse_fast(lines: Sequence[str], with_labels: bool, num_cols: int, num_labels: int):
    """Vectorised parse of a chunk; ``None`` if anything is off (the slow path then
    finds and reports it)."""
    n = len(lines)
    heads = []
    lab_counts = np.zeros(n, dtype=np.int64)
    parts = []
    feat_counts = np.zeros(n, dtype=np.int64)
    for i, line in enumerate(lines):
        head, fpart = _split_line(line, with_labels)
        if head is not None:
            heads.append(head)
            lab_counts[i] = head.count(",") + 1
        parts.append(fpart)
        feat_counts[i] = fpart.count(":")
    out = {}
    if with_labels:
        lj = ",".join(heads)
        # digits and single commas only: then each piece is one label
        if (
            not lj.isascii()
            or lj.translate(_DELETE_DIGITS_COMMAS)
            or ",," in lj
            or lj.startswith(",")
            or lj.endswith(",")
        ):
            return None
        labs = _fromstring(lj, ",") if lj else np.zeros(0)
        if labs is None or labs.size != int(lab_counts.sum()) or (labs.size and labs.max() >= num_labels):
            return None
        labs = labs.astype(np.int64)
        order, dup = _canonical(lab_counts, labs, num_labels)
        if dup >= 0:
            return None
        if order is not None:
            labs = labs[order]
        out["labels"] = (lab_counts, labs)
    fj = " ".join(parts)
    total = int(feat_counts.sum())
    if not _pairs_syntax_ok(fj, total):
        return None
    nums = _fromstring(fj.replace(":", " "), " ") if total else np.zeros(0)
    # every value parsed as exactly one number: it is a well-formed decimal number
    if nums is None or nums.size != 2 * total:
        return None
    idx = nums[0::2]
    if idx.size and idx.max() >= num_cols:
        return None
    with np.errstate(over="ignore"):
        vals = nums[1::2].astype(np.float32)
    if not bool(np.isfinite(vals).all()):
        return None
    idx = idx.astype(np.int64)
    order, dup = _canonical(feat_counts, idx, num_cols)
    if dup >= 0:
        return None
    if order is not None:
        idx, vals = idx[order], vals[order]
    out["features"] = (feat_counts, idx, vals)
    return out


def _parse_index(tok: str, what: str, bound: int, bound_name: str) -> int:
    if not _SIGNED_INT_RE.fullmatch(tok):
        raise _LineError(f"non-numeric {what} {tok!r} (expected an integer)")
    if len(tok) > 21:  # (int() refuses > 4,300 digits; every bound is below 2^63)
        raise _LineError(f"{what} {tok[:30]}... ({len(tok)} characters) out of range [0, {bound_name}) = [0, {bound})")
    v = int(tok)
    if not 0 <= v < bound:
        raise _LineError(f"{what} {v} out of range [0, {bound_name}) = [0, {bound})")
    return v


def _parse_line_slow(line: str, with_labels: bool, num_cols: int, num_labels: int, col_name: str):
    head, fpart = _split_line(line, with_labels)
    labels = []
    if head is not None:
        seen = set()
        for tok in head.split(","):
            if not tok:
                raise _LineError(f"empty label in {head!r} (labels are comma-separated integers)")
            v = _parse_index(tok, "label", num_labels, "L")
            if v in seen:
                raise _LineError(f"duplicate label {v}")
            seen.add(v)
            labels.append(v)
    idx, vals = [], []
    seen = set()
    for tok in fpart.split():
        i_s, colon, v_s = tok.partition(":")
        if not colon or ":" in v_s or not i_s or not v_s:
            raise _LineError(f"malformed token {tok!r} (expected index:value)")
        i = _parse_index(i_s, "index" if col_name == "L" else "feature index", num_cols, col_name)
        if not _NUM_RE.fullmatch(v_s):
            raise _LineError(f"non-numeric value {v_s!r} in {tok!r}")
        with np.errstate(over="ignore"):
            v = np.float32(float(v_s))
        if not np.isfinite(v):
            raise _LineError(f"value {v_s!r} in {tok!r} is not finite in float32")
        if i in seen:
            raise _LineError(
                f"duplicate {'index' if col_name == 'L' else 'feature index'} {i} (each index may appear once per line)"
            )
        seen.add(i)
        idx.append(i)
        vals.append(v)
    return labels, idx, vals


def _parse_slow(path, first_lineno, lines, with_labels, num_cols, num_labels, col_name):
    n = len(lines)
    lab_counts = np.zeros(n, dtype=np.int64)
    feat_counts = np.zeros(n, dtype=np.int64)
    labs, idx, vals = array("q"), array("q"), array("f")
    for k, line in enumerate(lines):
        try:
            lb, ix, vl = _parse_line_slow(line, with_labels, num_cols, num_labels, col_name)
        except _LineError as e:
            raise DataFormatError(path, first_lineno + k, str(e)) from None
        lab_counts[k] = len(lb)
        feat_counts[k] = len(ix)
        labs.extend(lb)
        idx.extend(ix)
        vals.extend(vl)
    out = {}
    if with_labels:
        labs_a = np.frombuffer(labs, dtype=np.int64) if labs else np.zeros(0, np.int64)
        order, _ = _canonical(lab_counts, labs_a, num_labels)
        out["labels"] = (lab_counts, labs_a if order is None else labs_a[order])
    idx_a = np.frombuffer(idx, dtype=np.int64) if idx else np.zeros(0, np.int64)
    vals_a = np.frombuffer(vals, dtype=np.float32) if vals else np.zeros(0, np.float32)
    order, _ = _canonical(feat_counts, idx_a, num_cols)
    if order is not None:
        idx_a, vals_a = idx_a[order], vals_a[order]
    out["features"] = (feat_counts, idx_a, vals_a)
    return out


def _read_rows(path, it, num_rows, with_labels, num_cols, num_labels, col_name):
    """Parse ``num_rows`` example lines from ``it`` (the header already consumed)."""
    feats = _Rows(with_values=True)
    labels = _Rows(with_values=False) if with_labels else None
    done = 0
    chunk: list = []
    chars = 0

    def flush():
        nonlocal done, chunk, chars
        first = done + 2
        res = _parse_fast(chunk, with_labels, num_cols, num_labels)
        if res is None:
            res = _parse_slow(path, first, chunk, with_labels, num_cols, num_labels, col_name)
        feats.add(*res["features"])
        if with_labels:
            labels.add(*res["labels"])
        done += len(chunk)
        chunk = []
        chars = 0

    for line in it:
        if done + len(chunk) == num_rows:
            if line.strip():
                raise DataFormatError(
                    path,
                    num_rows + 2,
                    f"more example lines than the {num_rows} declared in the header",
                )
            # blank lines after the last example are tolerated; anything else is not
            for k, rest in enumerate(it, num_rows + 3):
                if rest.strip():
                    raise DataFormatError(
                        path, k, f"more example lines than the {num_rows} declared in the header"
                    )
            break
        chunk.append(line)
        chars += len(line)
        if len(chunk) >= _CHUNK_LINES or chars >= _CHUNK_CHARS:
            flush()
    if chunk:
        flush()
    if done != num_rows:
        raise DataFormatError(
            path,
            done + 2,
            f"unexpected end of file: the header declares {num_rows} examples but the file has {done}",
        )
    return feats, labels


# ----------------------------------------------------------------------------------
# readers


def read_xc(path: PathLike) -> Tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read an Extreme Classification Repository bag-of-words file.

    Format: a header line ``N D L``, then one line per example::

        l1,l2,... f:v f:v ...

    with 0-based comma-separated labels followed by space-separated ``feature:value``
    pairs. An example may have no labels (the line then starts with a space or with
    its first feature) and no features. ``.gz`` files are decompressed on the fly.

    Returns ``(X, Y)``: ``X`` CSR float32 ``[N, D]`` features, ``Y`` CSR float32
    ``[N, L]`` with a 1 per label; both with sorted indices.

    Raises :class:`DataFormatError` (a ``ValueError``) naming the file and line for a
    bad header, a number of example lines other than ``N``, an index outside
    ``[0, L)`` / ``[0, D)``, a non-numeric or non-finite token, or a label or feature
    index repeated within a line.
    """
    with _open_text(path) as f:
        it = _lines(path, f)
        n, d, l = _read_header(path, it, ("N", "D", "L"))
        feats, labels = _read_rows(path, it, n, True, d, l, "D")
    return feats.csr(n, d), labels.csr(n, l)


def read_xc_header(path: PathLike) -> Tuple[int, int, int]:
    """``(N, D, L)`` from the header line of an XC file (plain or ``.gz``), without reading
    the examples; :class:`DataFormatError` for a missing or bad header, as :func:`read_xc`."""
    with _open_text(path) as f:
        return _read_header(path, _lines(path, f), ("N", "D", "L"))


def read_sparse_matrix(path: PathLike) -> sp.csr_matrix:
    """Read a sparse matrix file such as the LF datasets' ``trn_X_Y.txt``.

    Format: a header line ``N L``, then one line per row of space-separated
    ``index:value`` pairs (a line may be empty). ``.gz`` files are decompressed on the
    fly. Returns CSR float32 ``[N, L]`` with sorted indices. Malformed files raise
    :class:`DataFormatError` as in :func:`read_xc`.
    """
    with _open_text(path) as f:
        it = _lines(path, f)
        n, l = _read_header(path, it, ("N", "L"))
        feats, _ = _read_rows(path, it, n, False, l, 0, "L")
    return feats.csr(n, l)


def read_jsonl(
    path: PathLike,
    text_fields: Union[str, Sequence[str]] = ("title", "content"),
    label_field: str = "target_ind",
    num_labels: Optional[int] = None,
    require_text: bool = False,
    require_labels: bool = True,
) -> Tuple[list, sp.csr_matrix]:
    """Read a raw-text dataset: one JSON object per line (LF-Amazon-131K's
    ``trn.json`` style), plain or ``.gz``.

    The text of an example is its ``text_fields`` joined with a single space (a
    missing or ``null`` field counts as ``""``); its labels are the list of
    non-negative integers under ``label_field``. Blank lines are skipped. With
    ``require_text``, an example with none of ``text_fields`` (missing or ``null``) is an
    error instead; without ``require_labels``, an example without ``label_field`` has no
    labels (texts to predict for).

    Returns ``(texts, Y)``: ``texts`` a list of ``str``, ``Y`` CSR float32
    ``[len(texts), num_labels]``; ``num_labels`` defaults to the largest label + 1.

    Raises :class:`DataFormatError` naming the file and line for invalid JSON, a line
    that is not an object, a non-string text field, a missing or non-list label
    field, a label that is not an integer in ``[0, num_labels)`` or a repeated label; a
    ValueError when no example has any of ``text_fields`` (a misspelt field name).
    """
    given = text_fields
    if isinstance(text_fields, str):
        text_fields = (text_fields,)
    try:
        text_fields = tuple(text_fields)
    except TypeError:
        text_fields = None
    if text_fields is None or not all(isinstance(t, str) for t in text_fields):
        raise TypeError(f"text_fields must be a string or an iterable of strings; got {given!r}")
    if not text_fields:
        raise ValueError("text_fields must name at least one field; got none")
    if not isinstance(label_field, str):
        raise TypeError(f"label_field must be a string; got {type(label_field).__name__} {label_field!r}")
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Real)
                                   or not math.isfinite(num_labels) or int(num_labels) != num_labels
                                   or not 0 <= num_labels <= _MAX_COLUMNS):
        raise ValueError(f"num_labels must be an integer in [0, {_MAX_COLUMNS}] or None; got {num_labels!r}")
    bound = None if num_labels is None else int(num_labels)
    seen_fields: set = set()  # the text fields some line has (a misspelt one: none does)
    texts: list = []
    counts = array("q")
    labels = array("q")
    with _open_text(path) as f:
        for lineno, line in enumerate(_lines(path, f), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
            except ValueError as e:  # (e.g. an integer of more than 4,300 digits)
                raise DataFormatError(path, lineno, f"invalid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            if not texts:
                first_keys = sorted(obj)
            pieces = []
            if len(seen_fields) < len(text_fields):
                seen_fields.update(name for name in text_fields if name in obj)
            for name in text_fields:
                v = obj.get(name)
                if v is None:
                    v = ""
                elif not isinstance(v, str):
                    raise DataFormatError(path, lineno, f"text field {name!r} is a {type(v).__name__}, not a string")
                pieces.append(v)
            if require_text and all(obj.get(name) is None for name in text_fields):
                raise DataFormatError(path, lineno, f"no text: none of the fields {list(text_fields)} is there")
            if label_field not in obj and require_labels:
                raise DataFormatError(path, lineno, f"missing label field {label_field!r}")
            labs = obj.get(label_field, [])
            if not isinstance(labs, list):
                raise DataFormatError(
                    path, lineno, f"label field {label_field!r} is a {type(labs).__name__}, not a list"
                )
            seen = set()
            for v in labs:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise DataFormatError(path, lineno, f"label {v!r} is not an integer")
                if v < 0 or v >= (bound if bound is not None else _MAX_COLUMNS):
                    rng = f"[0, {bound if bound is not None else _MAX_COLUMNS})"
                    raise DataFormatError(path, lineno, f"label {v} out of range {rng}")
                if v in seen:
                    raise DataFormatError(path, lineno, f"duplicate label {v}")
                seen.add(v)
            texts.append(" ".join(pieces))
            counts.append(len(labs))
            labels.extend(sorted(labs))
    if texts and not seen_fields:
        raise ValueError(f"{os.fspath(path)}: none of its {len(texts)} examples has any of the text_fields "
                         f"{list(text_fields)}; the first example's fields are {first_keys}")
    lab = np.frombuffer(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    if bound is None:
        bound = int(lab.max()) + 1 if lab.size else 0
    rows = _Rows(with_values=False)
    rows.add(np.frombuffer(counts, dtype=np.int64) if counts else np.zeros(0, np.int64), lab)
    return texts, rows.csr(len(texts), bound)


# ----------------------------------------------------------------------------------
# writers


def _as_csr(M, name: str) -> sp.csr_matrix:
    if sp.issparse(M):
        M = sp.csr_matrix(M)
    else:
        try:
            if hasattr(M, "detach"):  # a torch tensor
                M = M.detach().cpu().numpy()
            a = np.asarray(M)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{name} must be a scipy sparse matrix or a 2-D array; got {type(M).__name__}") from e
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D; got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"{name} must be numeric; got dtype {a.dtype}")
        M = sp.csr_matrix(a)
    if np.issubdtype(M.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers; got dtype {M.dtype}")
    if M.ndim != 2:
        raise ValueError(f"{name} must be 2-D; got shape {M.shape}")
    M = M.copy()
    M.sum_duplicates()
    M.eliminate_zeros()
    return M


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_text_writer(path: PathLike, pending: Optional[list] = None):
    """A text stream onto a temporary file next to ``path``, renamed to ``path`` when
    the block completes; on any failure the temporary file is removed and ``path``
    is left as it was. With a list ``pending``, the rename is left to the caller:
    ``(temporary file, destination)`` is appended to it instead (several files are
    then put in place together, or all discarded). The content is gzip-compressed when the name ``path`` ends in
    ``.gz`` (the name given, as the readers decide, whatever a link's target is
    called). A symbolic link is written through (its target gets the new
    content; the link stays); a file without write permission, or a missing folder, is
    an error naming ``path`` before anything is written."""
    given = os.fspath(path)
    path = os.path.realpath(given)  # (through links: replacing the link itself would leave its target stale)
    dest_dir = os.path.dirname(path)
    base = os.path.basename(path)
    if not os.path.isdir(dest_dir):
        raise FileNotFoundError(f"cannot write {given}: its folder {dest_dir} does not exist")
    if os.path.exists(path) and (not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222):
        raise PermissionError(f"cannot write {given}: the file is read-only")  # (for root too: no write bit)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=dest_dir)
    raw = stream = text = None
    try:
        raw = os.fdopen(fd, "wb", buffering=1 << 20)
        if _is_gz(given):  # (the name the caller gave, as the readers decide: not a link's target)
            gbase = os.path.basename(given)
            inner = gbase[:-3] if gbase.lower().endswith(".gz") else gbase
            stream = gzip.GzipFile(filename=inner, mode="wb", fileobj=raw, compresslevel=6, mtime=0)
        else:
            stream = raw
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        yield text
        text.flush()
        text.detach()
        text = None
        if stream is not raw:
            stream.close()  # writes the gzip trailer; leaves raw open
        raw.flush()
        os.fsync(raw.fileno())
        raw.close()
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException:
        for obj in (text, stream, raw):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        if raw is None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _float32_strings(values: np.ndarray) -> list:
    """Short decimal strings that read back as exactly these float32 values: 7
    significant digits where that round-trips (e.g. ``0.1``, not ``0.100000001``),
    else 9 (always enough for float32)."""
    vals = values.astype(np.float32, copy=False)
    floats = vals.tolist()
    strs = ["%.7g" % v for v in floats]
    if strs:
        back = np.array(strs, dtype=np.float64).astype(np.float32)
        for j in np.flatnonzero(back != vals).tolist():
            strs[j] = "%.9g" % floats[j]
    return strs


def _row_tokens(M: sp.csr_matrix, r0: int, r1: int, with_values: bool) -> list:
    """Per row in ``[r0, r1)``: the ``index:value`` (or ``index``) tokens as a list."""
    a, b = int(M.indptr[r0]), int(M.indptr[r1])
    idx = M.indices[a:b].tolist()
    if with_values:
        toks = [f"{i}:{v}" for i, v in zip(idx, _float32_strings(M.data[a:b]))]
    else:
        toks = list(map(str, idx))
    ptr = (M.indptr[r0 : r1 + 1] - a).tolist()
    return [toks[ptr[k] : ptr[k + 1]] for k in range(r1 - r0)]


def _xc_lines(X: sp.csr_matrix, Y: sp.csr_matrix) -> Iterable[str]:
    """The body lines (with newlines) of an XC file for canonical CSR ``X`` and ``Y``."""
    n = X.shape[0]
    for r0 in range(0, n, _WRITE_ROWS):
        r1 = min(n, r0 + _WRITE_ROWS)
        feats = _row_tokens(X, r0, r1, True)
        labs = _row_tokens(Y, r0, r1, False)
        out = []
        for lb, ft in zip(labs, feats):
            if lb:
                out.append(",".join(lb) + (" " + " ".join(ft) if ft else "") + "\n")
            else:
                out.append((" " + " ".join(ft) if ft else "") + "\n")
        yield "".join(out)


def write_xc(path: PathLike, X, Y) -> None:
    """Write features ``X`` ``[N, D]`` and labels ``Y`` ``[N, L]`` (scipy sparse
    matrices or 2-D arrays) as an Extreme Classification Repository file (the format
    of :func:`read_xc`); gzip-compressed when ``path`` ends in ``.gz``.

    The stored non-zeros of ``X`` are written as float32, in a short decimal form
    that reads back bitwise identical; a value that rounds to 0 in float32 (e.g.
    ``1e-50``) is a zero and is not written, like the other zeros;
    the labels are the columns where a row of ``Y`` holds 1 (``Y`` holds 0/1). The file is written
    atomically: all or nothing (through a symbolic link, its target). Raises
    ``ValueError``/``TypeError`` naming the argument for a non-2-D input, a complex or
    non-numeric one, a mismatch of ``N``, a non-finite ``X`` value or a ``Y`` value other
    than 0 and 1, and
    ``PermissionError``/``FileNotFoundError`` naming ``path`` for a read-only file or a
    missing folder (before any file is touched).
    """
    _write_xc(path, X, Y)


def _write_xc(path: PathLike, X, Y, pending: Optional[list] = None) -> None:
    """:func:`write_xc`; with ``pending``, the file is left for the caller to put in
    place (see :func:`_atomic_text_writer`)."""
    X = _as_csr(X, "X")
    Y = _as_csr(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows N; got X {X.shape} and Y {Y.shape}")
    if Y.nnz and not bool((Y.data == 1).all()):  # (a score matrix passed as Y would be written as labels)
        bad = Y.data[Y.data != 1][0].item()
        raise ValueError(f"Y must hold 0/1 labels, as largeout.metrics takes them; got the value {bad!r} "
                         f"(duplicate entries of a sparse Y add up)")
    with np.errstate(over="ignore", invalid="ignore"):
        X = X.astype(np.float32)
    if not bool(np.isfinite(X.data).all()):
        raise ValueError("X has non-finite values (NaN or inf, possibly after conversion to float32)")
    X.eliminate_zeros()  # (values that round to 0 in float32: no explicit ``f:0`` token)
    for name, M in (("X", X), ("Y", Y)):
        if M.shape[1] >= 2**31:
            raise ValueError(f"{name} has {M.shape[1]} columns; at most 2^31 - 1 are supported")
    X.sort_indices()
    Y.sort_indices()
    with _atomic_text_writer(path, pending) as f:
        f.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n")
        for block in _xc_lines(X, Y):
            f.write(block)
