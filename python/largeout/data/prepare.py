"""Real XMC datasets from Debian packages, converted to largeout's dataset layout.

``prepare(NAME, source, out)`` (the command line: ``largeout data prepare NAME
--source DIR --out DIR``) reads the files of a system package and writes into
``out``:

- ``train.txt`` / ``test.txt``: bag-of-words features and labels in the Extreme
  Classification Repository format (:func:`largeout.data.read_xc`);
- ``train.jsonl`` / ``test.jsonl``: the raw input, one ``{"id", "text", "labels"}``
  object per line (:func:`largeout.data.read_jsonl` with ``text_fields="text"``,
  ``label_field="labels"``), for text encoders;
- ``labels.txt``: one label name per line, line ``i`` naming label id ``i``;
- ``vocab.txt`` (``wordnet`` only): one token per line, line ``j`` naming feature ``j``;
- ``meta.json``: what was converted and how (also returned by :func:`prepare`).

Datasets (``NAME``):

``wordnet``
    Debian's ``wordnet-base`` (``/usr/share/wordnet``; reads ``data.noun`` and
    ``index.noun``). One example per noun synset (82,115): the input is its gloss;
    its labels are all its hypernym ancestors, the transitive closure of the
    hypernym (``@``) and instance-hypernym (``@i``) pointers, without the synset
    itself (so ``entity.n.01``, the root, has no labels and is an ancestor of every
    other synset). Label names are NLTK-style ``lemma.n.NN`` (the synset's first
    lemma, lower-cased, and its sense number from ``index.noun``). Features: the
    lower-cased tokens ``[a-z0-9]+`` of the gloss; the vocabulary is the tokens in
    at least 2 training glosses (the ``num_features`` most frequent ones when that
    is given), sorted; values are tf-idf (raw count times
    ``ln((1 + N_train) / (1 + df)) + 1``, document frequencies from the training
    split), each row L2-normalised.

``go-mf`` / ``go-bp``
    Debian's ``metastudent-data`` (``/usr/share/metastudent-data``): proteins
    annotated with Gene Ontology terms of the molecular-function / biological-process
    namespace (``dataset_201401/{MFO,BPO}``). The package has no FASTA file: the
    sequences are in a BLAST protein database (version 4: ``goasp.fasta.pin`` index,
    ``.psq`` residues in NCBIstdaa codes, ``.phr`` ASN.1 headers whose title is
    ``ACCESSION|GO:...``), the annotations in ``goasp_annot.dat`` (``ACCESSION<TAB>GO
    id<TAB>GO id ...``, terms repeated once per evidence) and the ontology in
    ``goGraph.txt`` (``parent<TAB>child<TAB>1<TAB>relation``). One example per
    annotated protein, in ``goasp_annot.dat`` order; the input is the amino-acid
    sequence (one-letter codes). Labels follow the true path rule: each annotated
    term plus all its ancestors through ``is_a`` and ``part_of`` edges that lie in
    the same namespace (the ``is_a`` descendants of ``GO:0003674`` /
    ``GO:0008150``); ``regulates`` edges are not followed. So the namespace root is a
    label of every protein. Label names are the GO ids. Features: hashed k-mer
    counts, ``k = 1..max_k`` (default 3): k-mer ``s`` (its one-letter codes, as in
    the jsonl text) goes to column ``splitmix64((k << 56) | int.from_bytes(s,
    "big")) % num_features`` (:func:`kmer_feature_index`; default ``num_features =
    2**16``); a k-mer holding a gap ``-`` (NCBIstdaa code 0, kept as ``-`` in the
    jsonl text) is not counted; values ``log1p(count)``, each row L2-normalised,
    then rounded to 4 significant digits (the text files get ~30% smaller and twice
    as fast to write; rows stay unit-norm to ~1e-4). The sequences are read through ``mmap`` and
    featurised and written in blocks of ~1M residues (``train.txt``/``test.txt``
    through the same line formatter as :func:`~largeout.data.write_xc`), so memory
    stays bounded: the full sets have ~250M non-zeros, ~3.4 GB of text each.

Splits: ``round(test_fraction * N)`` test examples at random (``seed``). For GO,
proteins with identical sequences form one group and whole groups go to one side,
so no sequence is in both training and test; the test part then holds
``test_fraction`` of the proteins up to one group. ``max_examples`` first keeps a
random subset of that many examples (also from ``seed``), for quick runs.

Label space: labels that never occur in the training split are dropped (they
cannot be learned, and P@k / PSP@k would count them as misses only), the others
renumbered in source order (``data.noun`` order for WordNet, GO id order for GO);
the label space is the same for both splits. A test example can thereby lose
labels, or all of them (counted in ``meta.json``); examples are never dropped.

All or nothing: before anything is read, every output file (and ``out`` itself) is
checked to be writable, else an error names it; the files are then written to
temporary files and put in place together only once all of them are complete. A
failure leaves ``out`` as it was (the earlier run's files, or none). Files of an
earlier run that this one does not write (those listed in its ``meta.json``, e.g.
``vocab.txt`` when a GO dataset replaces a WordNet one) are removed, so the folder
never mixes two runs. ``meta.json`` is put in place last: a folder whose
``meta.json`` is missing is incomplete.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import mmap
import os
import re
import struct
import tempfile
import time
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

from .formats import DataFormatError, _atomic_text_writer, _lines, _open_text, _write_xc, _xc_lines

__all__ = ["NAMES", "DEFAULT_SOURCES", "prepare", "kmer_feature_index"]

PathLike = Union[str, "os.PathLike[str]"]

NAMES = ("wordnet", "go-mf", "go-bp")
DEFAULT_SOURCES = {
    "wordnet": "/usr/share/wordnet",
    "go-mf": "/usr/share/metastudent-data",
    "go-bp": "/usr/share/metastudent-data",
}
_PACKAGES = {"wordnet": "wordnet-base", "go-mf": "metastudent-data", "go-bp": "metastudent-data"}

# GO: sub-directory of the dataset and the namespace root term.
_GO_PARTS = {"go-mf": ("MFO", "GO:0003674", "molecular_function"), "go-bp": ("BPO", "GO:0008150", "biological_process")}
_GO_PROPAGATE = ("is_a", "part_of")
_GO_ID_RE = re.compile(r"GO:[0-9]{7}")

# NCBIstdaa residue codes 0..27 and their one-letter codes; 0 ('-', a gap) also
# separates the sequences in a .psq file (so sequences are delimited by the .pin
# offsets, never by counting 0 bytes).
_NCBISTDAA = b"-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"
_ALPHA = len(_NCBISTDAA)
_ASCII_OF_CODE = np.frombuffer(_NCBISTDAA, dtype=np.uint8)
_MAX_K = 7  # k-mer bytes and k itself fit one 64-bit key
_TABLE_MAX_K = 4  # k-mers up to this length are hashed through a lookup table
_GO_BLOCK_RESIDUES = 1 << 20  # residues featurised at once (bounds the temporaries, ~100 MB)
_GO_ROUND_DIGITS = 4

_WN_TOKEN_RE = re.compile(r"[a-z0-9]+")
_WN_MIN_DF = 2
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


def _digits(tok: str) -> bool:
    """Whether ``tok`` is a non-empty run of ASCII digits (``str.isdigit`` also takes other
    scripts' digits and superscripts, which ``int`` then refuses)."""
    return tok.isascii() and tok.isdigit()


_U64 = np.uint64

# The files each dataset writes into ``out`` (meta.json last).
_FILES = {
    "wordnet": ("train.txt", "test.txt", "train.jsonl", "test.jsonl", "labels.txt", "vocab.txt", "meta.json"),
    "go-mf": ("train.txt", "test.txt", "train.jsonl", "test.jsonl", "labels.txt", "meta.json"),
    "go-bp": ("train.txt", "test.txt", "train.jsonl", "test.jsonl", "labels.txt", "meta.json"),
}


# ----------------------------------------------------------------------------------
# entry point


def prepare(
    name: str,
    source: Optional[PathLike] = None,
    out: PathLike = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_examples: Optional[int] = None,
    num_features: Optional[int] = None,
    max_k: int = 3,
) -> dict:
    """Convert the system-packaged dataset ``name`` (``"wordnet"``, ``"go-mf"`` or
    ``"go-bp"``) found in ``source`` (default: the Debian package's directory,
    :data:`DEFAULT_SOURCES`) into the directory ``out`` (created if needed); see the
    module documentation for the files, features, labels and split.

    ``num_features``: for ``wordnet`` the largest vocabulary (most frequent training
    tokens; default: all tokens in at least 2 training glosses), for GO the number of
    hash buckets (default ``2**16``). ``max_k``: the longest k-mer (GO only, 1..7).

    Returns the dict written to ``meta.json``. Raises ``ValueError`` for an unknown
    ``name`` or a bad argument, ``FileNotFoundError`` naming a missing source file
    and the package that provides it, and :class:`DataFormatError` naming the file
    and line of a malformed text line (``ValueError`` naming the file and record
    for a malformed BLAST database), and ``PermissionError`` naming an output file
    that is read-only or whose folder is not writable (checked before any work). A
    failure leaves ``out`` as it was: the files are put in place only once all are
    written (see the module documentation).
    """
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)}")
    if out is None:
        raise ValueError("out: an output directory is required")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in [0, 1); got {test_fraction!r}")
    for arg, v in (("max_examples", max_examples), ("num_features", num_features)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{arg} must be a positive integer or None; got {v!r}")
    if num_features is not None and num_features >= 2**31:
        raise ValueError(f"num_features must be below 2^31; got {num_features}")
    if isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)) or not 1 <= max_k <= _MAX_K:
        raise ValueError(f"max_k must be an integer in [1, {_MAX_K}]; got {max_k!r}")
    src = os.fspath(source) if source is not None else DEFAULT_SOURCES[name]
    if not os.path.isdir(src):
        raise FileNotFoundError(
            f"{name}: source directory {src} does not exist; {_provided_by(name)}"
        )
    t0 = time.time()
    args = dict(seed=int(seed), test_fraction=float(test_fraction),
                max_examples=None if max_examples is None else int(max_examples))
    out = os.fspath(out)
    created = not os.path.lexists(out)
    os.makedirs(out, exist_ok=True)
    stage = _Staging(out, _FILES[name])
    try:
        stage.check()
        if name == "wordnet":
            meta = _prepare_wordnet(src, stage, num_features=num_features, **args)
        else:
            meta = _prepare_go(name, src, stage, num_features=num_features or (1 << 16), max_k=int(max_k),
                               **args)
        meta["seconds"] = round(time.time() - t0, 2)
        _write_json(stage.path("meta.json"), meta, stage.pending)
        stage.commit()
    except BaseException:
        stage.discard()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # (only if still empty)
        raise
    return meta


class _Staging:
    """The output files of one prepare run: checked up front, written to temporary
    files (``pending``, by :func:`_atomic_text_writer`) and put in place together by
    :meth:`commit`, or all discarded."""

    def __init__(self, out: str, names: Sequence[str]) -> None:
        self.out = out
        self.names = tuple(names)
        self.pending: List[Tuple[str, str]] = []

    def path(self, name: str) -> str:
        assert name in self.names, name
        return os.path.join(self.out, name)

    def check(self) -> None:
        """Raise, naming it, for an output that cannot be written (before any work)."""
        out = self.out
        if not os.path.isdir(out):
            raise NotADirectoryError(f"cannot write into {out}: it is not a folder")
        for name in self.names:
            given = os.path.join(out, name)
            real = os.path.realpath(given)
            folder = os.path.dirname(real)
            if os.path.isdir(real):
                raise IsADirectoryError(f"cannot write {given}: it is a folder")
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"cannot write {given}: its folder {folder} does not exist")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot write {given}: its folder {folder} is not writable")
            if os.path.exists(real) and (not os.access(real, os.W_OK) or not os.stat(real).st_mode & 0o222):
                raise PermissionError(f"cannot write {given}: the file is read-only")  # (for root too)

    def _earlier_files(self) -> List[str]:
        """The files an earlier prepare run wrote here that this run does not write: those its
        meta.json lists, where that meta.json is a prepare run's (a dataset of NAMES, files
        that prepare writes; a meta.json of anything else names nothing to remove)."""
        try:
            with open(os.path.join(self.out, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
            name, files = meta.get("name"), meta.get("files")
        except (OSError, ValueError, AttributeError):
            return []
        if name not in _FILES or not isinstance(files, list) or not set(files) <= set(_FILES[name]):
            return []
        return [f for f in files if f not in self.names
                and (os.path.islink(os.path.join(self.out, f)) or os.path.isfile(os.path.join(self.out, f)))]

    def commit(self) -> None:
        """Put every written file in place, all or nothing: each file it replaces (and each
        of the earlier run's files this run does not write) is first moved aside to a backup
        next to it, the new meta.json comes last; if any step fails, the new files are removed
        and the backups moved back. The backups are deleted once everything is in place."""
        meta = os.path.realpath(self.path("meta.json"))
        written = {dest for _, dest in self.pending}
        missing = [n for n in self.names if os.path.realpath(self.path(n)) not in written]
        assert not missing, f"not written: {missing}"
        order = [pd for pd in self.pending if pd[1] != meta] + [pd for pd in self.pending if pd[1] == meta]
        stale = [os.path.join(self.out, n) for n in self._earlier_files()]
        moved: List[Tuple[str, str]] = []  # (backup, original place)
        placed: List[str] = []  # new files put in place
        try:
            for dest in [meta] + [d for _, d in order if d != meta] + stale:
                if os.path.lexists(dest):
                    fd, bak = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".bak",
                                               dir=os.path.dirname(dest))
                    os.close(fd)
                    try:
                        os.replace(dest, bak)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.unlink(bak)
                        raise
                    moved.append((bak, dest))
            for tmp, dest in order:
                os.replace(tmp, dest)
                placed.append(dest)
        except BaseException:
            for dest in reversed(placed):
                with contextlib.suppress(OSError):
                    os.unlink(dest)
            for bak, dest in reversed(moved):
                with contextlib.suppress(OSError):
                    os.replace(bak, dest)
            raise
        self.pending = []
        for bak, _ in moved:
            with contextlib.suppress(OSError):
                os.unlink(bak)

    def discard(self) -> None:
        for tmp, _ in self.pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.pending = []


def _provided_by(name: str) -> str:
    pkg = _PACKAGES[name]
    return (
        f"the Debian package {pkg} provides it (apt-get install {pkg}), "
        f"or pass --source DIR (source=DIR) with the package's files"
    )


def _require(name: str, path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: {path} is missing; {_provided_by(name)}")
    return path


def _base_meta(name: str, src: str, seed: int, test_fraction: float, max_examples: Optional[int]) -> dict:
    return {
        "name": name,
        "source": os.path.abspath(src),
        "package": _PACKAGES[name],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "test_fraction": test_fraction,
        "max_examples": max_examples,
    }


# ----------------------------------------------------------------------------------
# shared helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))


def _subset(n: int, max_examples: Optional[int], seed: int) -> np.ndarray:
    """Sorted indices of the examples kept: all, or a random ``max_examples`` of them."""
    if max_examples is None or max_examples >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(_rng(seed, 1).choice(n, size=max_examples, replace=False)).astype(np.int64)


def _group_split(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """``is_test`` per example: whole groups (``groups[i]`` = 0-based group id of
    example ``i``, ids numbered in order of first appearance) in random order go to
    the test side while fewer than ``round(test_fraction * N)`` examples are there."""
    n = groups.size
    target = int(round(test_fraction * n))
    if n == 0 or target == 0:
        return np.zeros(n, dtype=bool)
    num_groups = int(groups.max()) + 1
    sizes = np.bincount(groups, minlength=num_groups)
    perm = _rng(seed, 2).permutation(num_groups)
    before = np.cumsum(sizes[perm]) - sizes[perm]  # examples already on the test side
    test_group = np.zeros(num_groups, dtype=bool)
    test_group[perm[before < target]] = True
    return test_group[groups]


def _label_csr(rows: Sequence[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
    counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.fromiter((v for r in rows for v in r), dtype=np.int64, count=int(indptr[-1]))
    return indptr, indices


def _remap_labels(indptr: np.ndarray, indices: np.ndarray, is_test: np.ndarray, num_raw: int):
    """Keep the raw labels that occur in a training example, renumbered in raw order.

    Returns ``(kept_raw_ids, Y)`` with ``Y`` the CSR float32 ``[N, L]`` of all
    examples in the new numbering (rows sorted)."""
    n = is_test.size
    row_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    used = np.bincount(indices[~is_test[row_of]], minlength=num_raw) > 0
    kept = np.flatnonzero(used)
    new_id = np.full(num_raw, -1, dtype=np.int64)
    new_id[kept] = np.arange(kept.size)
    mapped = new_id[indices]
    keep = mapped >= 0
    counts = np.bincount(row_of[keep], minlength=n)
    ind2 = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ind2[1:])
    Y = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), mapped[keep].astype(np.int32), ind2), shape=(n, kept.size))
    Y.sort_indices()
    return kept, Y


def _label_stats(Y: sp.csr_matrix, is_test: np.ndarray, raw_counts: np.ndarray) -> dict:
    per = np.diff(Y.indptr)
    te = is_test
    return {
        "labels_per_train_example": round(float(per[~te].mean()), 3) if (~te).any() else 0.0,
        "labels_per_test_example": round(float(per[te].mean()), 3) if te.any() else 0.0,
        "test_label_occurrences_dropped": int(raw_counts[te].sum() - per[te].sum()),
        "test_examples_without_labels": int((per[te] == 0).sum()),
        "train_examples_without_labels": int((per[~te] == 0).sum()),
    }


def _closure(parents: List[List[int]], what: str, names: Sequence[str]) -> List[frozenset]:
    """All ancestors of every node of a DAG given by its parent lists (Kahn's order,
    parents before children). A cycle raises ValueError."""
    n = len(parents)
    children: List[List[int]] = [[] for _ in range(n)]
    pending = [0] * n
    for c, ps in enumerate(parents):
        for p in ps:
            children[p].append(c)
        pending[c] = len(ps)
    anc: List[Optional[frozenset]] = [None] * n
    empty = frozenset()
    ready = [c for c in range(n) if pending[c] == 0]
    done = 0
    while ready:
        c = ready.pop()
        ps = parents[c]
        if not ps:
            a = empty
        elif len(ps) == 1:
            a = anc[ps[0]] | {ps[0]}
        else:
            s = set(ps)
            for p in ps:
                s |= anc[p]
            a = frozenset(s)
        anc[c] = a
        done += 1
        for ch in children[c]:
            pending[ch] -= 1
            if pending[ch] == 0:
                ready.append(ch)
    if done != n:
        raise ValueError(f"{what}: the hierarchy has a cycle (through {names[pending.index(max(pending))]})")
    return anc  # type: ignore[return-value]


def _write_lines(path: str, lines: Iterable[str], pending: Optional[list] = None) -> None:
    with _atomic_text_writer(path, pending) as f:
        for line in lines:
            f.write(line + "\n")


def _write_json(path: str, obj: dict, pending: Optional[list] = None) -> None:
    with _atomic_text_writer(path, pending) as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def _jsonl_line(ex_id: str, text: str, labels: Sequence[int]) -> str:
    return json.dumps({"id": ex_id, "text": text, "labels": list(labels)}, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------
# WordNet


def _wn_data_lines(path: str):
    """``(lineno, line)`` of a WordNet data/index file after its license header
    (the leading lines that start with two spaces)."""
    with _open_text(path) as f:
        header = True
        for lineno, line in enumerate(_lines(path, f), 1):
            if header and line.startswith("  "):
                continue
            header = False
            if not line.strip():
                continue
            yield lineno, line


def _parse_index_noun(path: str) -> Dict[str, List[int]]:
    """lemma -> synset offsets in sense order (``index.noun``: ``lemma pos
    synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...``)."""
    senses: Dict[str, List[int]] = {}
    for lineno, line in _wn_data_lines(path):
        t = line.split()
        if len(t) < 6 or not _digits(t[2]) or not _digits(t[3]):
            raise DataFormatError(path, lineno, "malformed index line (expected 'lemma pos synset_cnt p_cnt ...')")
        n_syn, n_ptr = int(t[2]), int(t[3])
        if len(t) != 6 + n_ptr + n_syn:
            raise DataFormatError(
                path, lineno, f"{len(t)} fields, but synset_cnt {n_syn} and p_cnt {n_ptr} need {6 + n_ptr + n_syn}"
            )
        offs = t[6 + n_ptr :]
        if not all(len(o) == 8 and _digits(o) for o in offs):
            raise DataFormatError(path, lineno, "synset offsets must be 8-digit numbers")
        if t[1] == "n":
            senses[t[0]] = [int(o) for o in offs]
    return senses


def _parse_data_noun(path: str):
    """Per synset (file order): offset, first lemma, hypernym offsets with the line
    they come from, gloss. Fields: ``synset_offset lex_filenum ss_type w_cnt (2 hex
    digits) [word lex_id]... p_cnt (3 digits) [pointer_symbol synset_offset pos
    source/target]... | gloss``."""
    offsets: List[int] = []
    lemmas: List[str] = []
    hypers: List[List[int]] = []
    glosses: List[str] = []
    linenos: List[int] = []
    for lineno, line in _wn_data_lines(path):
        head, bar, gloss = line.partition(" | ")
        if not bar:
            raise DataFormatError(path, lineno, "no ' | ' before the gloss")
        t = head.split()

        def bad(reason: str):
            return DataFormatError(path, lineno, reason)

        if len(t) < 6:
            raise bad(f"too few fields ({len(t)}) before the gloss")
        if len(t[0]) != 8 or not _digits(t[0]):
            raise bad(f"synset_offset {t[0]!r} is not an 8-digit number")
        if not _digits(t[1]):
            raise bad(f"lex_filenum {t[1]!r} is not a number")
        if t[2] != "n":
            raise bad(f"ss_type {t[2]!r}: data.noun holds noun synsets ('n') only")
        if not _HEX_RE.fullmatch(t[3]):
            raise bad(f"w_cnt {t[3]!r} is not a hexadecimal number")
        w_cnt = int(t[3], 16)
        if w_cnt < 1:
            raise bad("w_cnt is 0 (a synset has at least one word)")
        p = 4 + 2 * w_cnt
        if len(t) <= p:
            raise bad(f"w_cnt {w_cnt} words and p_cnt need {p + 1} fields; the line has {len(t)}")
        for j in range(w_cnt):
            if not _HEX_RE.fullmatch(t[5 + 2 * j]):
                raise bad(f"lex_id {t[5 + 2 * j]!r} of word {t[4 + 2 * j]!r} is not a hexadecimal number")
        if len(t[p]) != 3 or not _digits(t[p]):
            raise bad(f"p_cnt {t[p]!r} is not a 3-digit number")
        p_cnt = int(t[p])
        if len(t) != p + 1 + 4 * p_cnt:
            raise bad(f"p_cnt {p_cnt} pointers need {p + 1 + 4 * p_cnt} fields before the gloss; the line has {len(t)}")
        hyp = []
        for j in range(p + 1, len(t), 4):
            sym, off, pos, st = t[j : j + 4]
            if len(off) != 8 or not _digits(off):
                raise bad(f"pointer offset {off!r} is not an 8-digit number")
            if pos not in ("n", "v", "a", "s", "r"):
                raise bad(f"pointer pos {pos!r} is not one of n v a s r")
            if len(st) != 4 or not _HEX_RE.fullmatch(st):
                raise bad(f"pointer source/target {st!r} is not 4 hexadecimal digits")
            if sym in ("@", "@i") and pos == "n":
                hyp.append(int(off))
        offsets.append(int(t[0]))
        lemmas.append(t[4])
        hypers.append(hyp)
        glosses.append(gloss.strip())
        linenos.append(lineno)
    return offsets, lemmas, hypers, glosses, linenos


def _prepare_wordnet(src, stage, *, seed, test_fraction, max_examples, num_features):
    name = "wordnet"
    data_path = _require(name, os.path.join(src, "data.noun"))
    index_path = _require(name, os.path.join(src, "index.noun"))
    senses = _parse_index_noun(index_path)
    offsets, lemmas, hypers, glosses, linenos = _parse_data_noun(data_path)
    n_all = len(offsets)
    pos_of: Dict[int, int] = {}
    for i, off in enumerate(offsets):
        if off in pos_of:
            raise DataFormatError(data_path, linenos[i], f"synset offset {off:08d} appears twice")
        pos_of[off] = i
    parents: List[List[int]] = []
    for i, hyp in enumerate(hypers):
        ps = []
        for off in hyp:
            if off not in pos_of:
                raise DataFormatError(data_path, linenos[i], f"hypernym pointer to {off:08d}, which is no noun synset")
            if pos_of[off] not in ps:
                ps.append(pos_of[off])
        parents.append(ps)
    anc = _closure(parents, data_path, [f"synset {off:08d}" for off in offsets])
    names = []
    for off, lemma in zip(offsets, lemmas):
        low = lemma.lower()
        offs = senses.get(low, ())
        names.append(f"{low}.n.{offs.index(off) + 1:02d}" if off in offs else f"{off:08d}:{lemma}")

    sel = _subset(n_all, max_examples, seed)
    n = sel.size
    is_test = _group_split(np.arange(n, dtype=np.int64), test_fraction, seed)

    # labels: raw id = synset position in data.noun
    raw_rows = [sorted(anc[i]) for i in sel.tolist()]
    indptr, indices = _label_csr(raw_rows)
    kept, Y = _remap_labels(indptr, indices, is_test, n_all)

    # features: tf-idf over the gloss tokens, vocabulary and idf from training glosses
    docs = [_WN_TOKEN_RE.findall(glosses[i].lower()) for i in sel.tolist()]
    df: Dict[str, int] = defaultdict(int)
    n_train = int((~is_test).sum())
    for d, te in zip(docs, is_test.tolist()):
        if not te:
            for tok in set(d):
                df[tok] += 1
    cands = [t for t, c in df.items() if c >= _WN_MIN_DF]
    if num_features is not None and len(cands) > num_features:
        cands = sorted(cands, key=lambda t: (-df[t], t))[:num_features]
    vocab = sorted(cands)
    col = {t: j for j, t in enumerate(vocab)}
    ids = np.fromiter((col.get(t, -1) for d in docs for t in d), dtype=np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), [len(d) for d in docs])
    ok = ids >= 0
    X = sp.csr_matrix((np.ones(int(ok.sum())), (rows[ok], ids[ok])), shape=(n, len(vocab)), dtype=np.float64)
    X.sum_duplicates()
    dfv = np.array([df[t] for t in vocab], dtype=np.float64)
    idf = np.log((1.0 + n_train) / (1.0 + dfv)) + 1.0
    X.data *= idf[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    X = sp.csr_matrix(sp.diags(1.0 / norms) @ X, dtype=np.float32)
    X.sort_indices()

    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    _write_xc(stage.path("train.txt"), X[tr], Y[tr], stage.pending)
    _write_xc(stage.path("test.txt"), X[te], Y[te], stage.pending)
    for part, rows_ in (("train", tr), ("test", te)):
        with _atomic_text_writer(stage.path(f"{part}.jsonl"), stage.pending) as f:
            for r in rows_.tolist():
                i = int(sel[r])
                labs = Y.indices[Y.indptr[r] : Y.indptr[r + 1]].tolist()
                f.write(_jsonl_line(names[i], glosses[i], labs))
    _write_lines(stage.path("labels.txt"), (names[i] for i in kept.tolist()), stage.pending)
    _write_lines(stage.path("vocab.txt"), vocab, stage.pending)

    meta = _base_meta(name, src, seed, test_fraction, max_examples)
    meta.update({
        "N_train": int(tr.size), "N_test": int(te.size), "D": len(vocab), "L": int(kept.size),
        "synsets_total": n_all,
        "labels_before_dropping": int(np.unique(indices).size),
        "labels_dropped_not_in_train": int(np.unique(indices).size - kept.size),
        **_label_stats(Y, is_test, np.diff(indptr)),
        "features": (
            f"tf-idf of lower-cased gloss tokens {_WN_TOKEN_RE.pattern}; vocabulary (vocab.txt): tokens in >= "
            f"{_WN_MIN_DF} training glosses{'' if num_features is None else f', at most {num_features} most frequent'}"
            ", sorted; value = count * (ln((1 + N_train) / (1 + df)) + 1), df from the training split; "
            "rows L2-normalised"
        ),
        "labels": (
            "all hypernym ancestors (transitive closure of '@' and '@i' pointers) of the noun synset, "
            "itself excluded; names lemma.n.NN (labels.txt); labels absent from the training split dropped"
        ),
        "input": "the synset's gloss (jsonl 'text')",
        "split": f"random: round(test_fraction * N) synsets to test (seed {seed})",
        "files": list(_FILES[name]),
    })
    return meta


# ----------------------------------------------------------------------------------
# GO: the ontology and the annotations


def _go_dataset_dir(name: str, src: str) -> str:
    """The directory holding goGraph.txt: ``src`` itself, or its ``dataset_<ver>``
    (``ver`` from ``dataversion.txt``, else the newest ``dataset_*``)."""
    if os.path.isfile(os.path.join(src, "goGraph.txt")):
        return src
    ver_file = os.path.join(src, "dataversion.txt")
    if os.path.isfile(ver_file):
        with open(ver_file, encoding="utf-8", errors="replace") as f:
            ver = f.read().strip()
        return os.path.join(src, f"dataset_{ver}")
    found = sorted(
        d for d in os.listdir(src) if d.startswith("dataset_") and os.path.isfile(os.path.join(src, d, "goGraph.txt"))
    )
    return os.path.join(src, found[-1]) if found else src


def _tab_rows(path: str):
    """``(line number, tab-separated fields)`` of the non-blank lines of a text file."""
    with _open_text(path) as f:
        for lineno, line in enumerate(_lines(path, f), 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line.split("\t")


def _read_go_graph(path: str):
    """Edges ``(child, parent, relation)`` of ``goGraph.txt`` (``parent<TAB>child
    <TAB>distance<TAB>relation`` lines; parents may be pseudo-nodes such as
    ``obsolete_molecular_function``)."""
    edges = []
    for lineno, t in _tab_rows(path):
        if len(t) != 4:
            raise DataFormatError(
                path, lineno, f"expected 4 tab-separated fields (parent, child, 1, relation); got {len(t)}"
            )
        parent, child, _, rel = (x.strip() for x in t)
        if not _GO_ID_RE.fullmatch(child):
            raise DataFormatError(path, lineno, f"child {child!r} is not a GO id (GO:nnnnnnn)")
        if not parent or not rel:
            raise DataFormatError(path, lineno, "empty parent or relation")
        edges.append((child, parent, rel))
    return edges


def _go_ancestors(edges, root: str, graph_path: str):
    """The namespace (``is_a`` descendants of ``root``, itself included) and, per
    term of it, its ancestors within it through ``is_a``/``part_of`` edges."""
    kids = defaultdict(list)
    for child, parent, rel in edges:
        if rel == "is_a":
            kids[parent].append(child)
    if root not in kids:
        raise ValueError(f"{graph_path}: the ontology has no term below the namespace root {root}")
    ns = {root}
    stack = [root]
    while stack:
        for c in kids.get(stack.pop(), ()):
            if c not in ns:
                ns.add(c)
                stack.append(c)
    terms = sorted(ns)
    pos = {t: i for i, t in enumerate(terms)}
    parents: List[List[int]] = [[] for _ in terms]
    for child, parent, rel in edges:
        if rel in _GO_PROPAGATE and child in pos and parent in pos:
            p = pos[parent]
            if p not in parents[pos[child]]:
                parents[pos[child]].append(p)
    anc = _closure(parents, graph_path, terms)
    return terms, {t: anc[i] for i, t in enumerate(terms)}


def _read_annotations(path: str):
    """``(accessions, term lists, line numbers)`` of ``goasp_annot.dat``
    (``ACCESSION<TAB>GO:...<TAB>GO:...``; repeated terms collapse)."""
    accs: List[str] = []
    terms: List[Tuple[str, ...]] = []
    linenos: List[int] = []
    seen: Dict[str, int] = {}
    for lineno, t in _tab_rows(path):
        acc = t[0].strip()
        if not acc or len(t) < 2:
            raise DataFormatError(path, lineno, "expected 'ACCESSION<TAB>GO:nnnnnnn[<TAB>GO:nnnnnnn...]'")
        gos = [g.strip() for g in t[1:] if g.strip()]
        if not gos:
            raise DataFormatError(path, lineno, f"protein {acc} has no GO term")
        for g in gos:
            if not _GO_ID_RE.fullmatch(g):
                raise DataFormatError(path, lineno, f"{g!r} is not a GO id (GO:nnnnnnn)")
        if acc in seen:
            raise DataFormatError(path, lineno, f"protein {acc} is annotated again (first on line {seen[acc]})")
        seen[acc] = lineno
        accs.append(acc)
        terms.append(tuple(sorted(set(gos))))
        linenos.append(lineno)
    return accs, terms, linenos


# ----------------------------------------------------------------------------------
# GO: the BLAST protein database (version 4)

_DEFLINE_TITLE = b"\x30\x80\x30\x80\xa0\x80\x1a"  # Blast-def-line-set, Blast-def-line, [0] title, VisibleString


class _BlastDb:
    """A BLAST version-4 protein database (``.pin``/``.psq``/``.phr``), read through
    ``mmap``: sequence ``i`` is ``psq[seq_off[i] : seq_off[i + 1] - 1]`` (NCBIstdaa
    codes; a 0 byte before and after each sequence)."""

    def __init__(self, base: str) -> None:
        self.pin, self.psq, self.phr = base + ".pin", base + ".psq", base + ".phr"
        with open(self.pin, "rb") as f:
            raw = f.read()
        try:
            version, dbtype = struct.unpack_from(">ii", raw, 0)
            if version != 4:
                raise ValueError(f"format version {version} (only version 4 is read)")
            if dbtype != 1:
                raise ValueError(f"database type {dbtype} is not protein (1)")
            p = 8
            for _ in range(2):  # title, date
                (ln,) = struct.unpack_from(">i", raw, p)
                p += 4 + ln
            (n,) = struct.unpack_from(">i", raw, p)
            p += 4 + 8 + 4  # number of sequences, total residues (little-endian int64), longest
            if n < 0 or len(raw) != p + 8 * (n + 1):
                raise ValueError(f"{len(raw)} bytes do not hold {n} sequences' offsets")
            self.hdr_off = np.frombuffer(raw, dtype=">i4", count=n + 1, offset=p).astype(np.int64)
            self.seq_off = np.frombuffer(raw, dtype=">i4", count=n + 1, offset=p + 4 * (n + 1)).astype(np.int64)
        except (struct.error, ValueError) as e:
            raise ValueError(f"{self.pin}: not a BLAST version-4 protein database index: {e}") from None
        self.n = n
        for path, off in ((self.phr, self.hdr_off), (self.psq, self.seq_off)):
            size = os.path.getsize(path)
            if n and (off[-1] != size or bool((np.diff(off) < 1).any()) or off[0] < 0):
                raise ValueError(f"{path}: {size} bytes do not match the offsets in {self.pin}")
        self._files = []
        self.seq = self._map(self.psq)
        if n and (self.seq[0] != 0 or bool(np.frombuffer(self.seq, np.uint8)[self.seq_off[1:] - 1].any())):
            self.close()
            raise ValueError(f"{self.psq}: sequences are not 0-separated as {self.pin} says")

    def _map(self, path: str):
        f = open(path, "rb")
        self._files.append(f)
        if os.path.getsize(path) == 0:
            return b""
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._files.append(m)
        return m

    def close(self) -> None:
        for f in reversed(self._files):
            f.close()
        self._files = []

    def accessions(self) -> List[str]:
        """The first word (up to ``|``) of each sequence's title."""
        with open(self.phr, "rb") as f:
            phr = f.read()
        out = []
        off = self.hdr_off.tolist()
        k = len(_DEFLINE_TITLE)
        for i in range(self.n):
            a, b = off[i], off[i + 1]
            if phr[a : a + k] != _DEFLINE_TITLE or a + k >= b:
                raise ValueError(f"{self.phr}: header {i}: not a Blast-def-line-set starting with a title")
            ln = phr[a + k]
            p = a + k + 1
            if ln & 0x80:
                nb = ln & 0x7F
                ln = int.from_bytes(phr[p : p + nb], "big")
                p += nb
            if p + ln > b:
                raise ValueError(f"{self.phr}: header {i}: title runs past the record")
            words = phr[p : p + ln].split(b"|", 1)[0].split()
            if not words:
                raise ValueError(f"{self.phr}: header {i}: empty title (no accession)")
            out.append(words[0].decode("ascii", "replace"))
        return out

    def span(self, i: int) -> Tuple[int, int]:
        return int(self.seq_off[i]), int(self.seq_off[i + 1]) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> _U64(30))
    z = z * _U64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> _U64(27))
    z = z * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def kmer_feature_index(kmer: str, num_features: int = 1 << 16) -> int:
    """The feature column of a k-mer (one-letter amino-acid codes, ``1 <= k <= 7``)
    in the GO datasets: ``splitmix64((k << 56) | int.from_bytes(kmer, "big")) %
    num_features`` (the splitmix64 finaliser; stable across runs and platforms)."""
    b = kmer.encode("ascii")
    if not 1 <= len(b) <= _MAX_K:
        raise ValueError(f"k-mer length must be in [1, {_MAX_K}]; got {len(b)}")
    key = np.array([(len(b) << 56) | int.from_bytes(b, "big")], dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(_splitmix64(key)[0] % _U64(num_features))


def _hash_codes(codes: np.ndarray, k: int, num_features: int) -> np.ndarray:
    """Columns of the k-mers whose NCBIstdaa codes are the rows of ``codes`` [m, k]."""
    key = np.full(codes.shape[0], k << 56, dtype=np.uint64)
    for j in range(k):
        key |= _ASCII_OF_CODE[codes[:, j]].astype(np.uint64) << _U64(8 * (k - 1 - j))
    with np.errstate(over="ignore"):
        return (_splitmix64(key) % _U64(num_features)).astype(np.int64)


@functools.lru_cache(maxsize=16)
def _kmer_table(k: int, num_features: int) -> np.ndarray:
    """Column of every k-mer by its base-28 NCBIstdaa code; -1 where a code is 0."""
    idx = np.arange(_ALPHA**k, dtype=np.int64)
    codes = np.stack([(idx // _ALPHA ** (k - 1 - j)) % _ALPHA for j in range(k)], axis=1)
    col = _hash_codes(codes, k, num_features)
    col[(codes == 0).any(axis=1)] = -1
    return col.astype(np.int32)


def _kmer_features(buf: np.ndarray, lengths: np.ndarray, max_k: int, num_features: int) -> sp.csr_matrix:
    """Rows of hashed k-mer ``log1p(count)``, L2-normalised and rounded, for the
    NCBIstdaa sequences in ``buf``: a 0, then each sequence followed by a 0, the
    sequence of row ``r`` having ``lengths[r]`` residues.

    Rows come from ``lengths``, not from the 0 bytes: code 0 is also the gap ``-``,
    which may occur inside a sequence. A k-mer holding a code 0 (one that runs across
    a separator, or one with a gap) is not counted."""
    lengths = np.asarray(lengths, dtype=np.int64)
    num_rows = lengths.size
    n = buf.size
    if n != 1 + int((lengths + 1).sum()):
        raise AssertionError(f"{n} residue bytes do not hold sequences of lengths summing to {int(lengths.sum())}")
    row_of = np.empty(n, dtype=np.int64)  # the row of each position (the leading 0: row 0, never used)
    row_of[0] = 0
    row_of[1:] = np.repeat(np.arange(num_rows, dtype=np.int64), lengths + 1)
    keys = []
    for k in range(1, max_k + 1):
        m = n - k + 1
        if m <= 0:
            break
        if k <= _TABLE_MAX_K:
            idx = buf[:m].astype(np.int32)
            for j in range(1, k):
                idx *= _ALPHA
                idx += buf[j : j + m]
            col = _kmer_table(k, num_features)[idx]
            pos = np.flatnonzero(col >= 0)
            col = col[pos].astype(np.int64)
        else:
            win = np.lib.stride_tricks.sliding_window_view(buf, k)
            pos = np.flatnonzero((win != 0).all(axis=1))
            col = _hash_codes(win[pos], k, num_features)
        keys.append(row_of[pos] * num_features + col)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    key.sort()
    if key.size:
        first = np.empty(key.size, dtype=bool)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, key.size))
        ukey = key[starts]
    else:
        counts = ukey = np.zeros(0, np.int64)
    rows = ukey // num_features
    cols = (ukey % num_features).astype(np.int32)
    vals = np.log1p(counts.astype(np.float64))
    norms = np.sqrt(np.bincount(rows, weights=vals * vals, minlength=num_rows))
    if vals.size:
        vals /= norms[rows]
        e = np.floor(np.log10(vals))
        q = 10.0 ** (_GO_ROUND_DIGITS - 1 - e)
        vals = np.rint(vals * q) / q
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    X = sp.csr_matrix((vals.astype(np.float32), cols, indptr), shape=(num_rows, num_features))
    X.has_canonical_format = True
    return X


# ----------------------------------------------------------------------------------
# GO: the conversion


def _prepare_go(name, src, stage, *, seed, test_fraction, max_examples, num_features, max_k):
    sub, root, namespace = _GO_PARTS[name]
    ddir = _go_dataset_dir(name, src)
    graph_path = _require(name, os.path.join(ddir, "goGraph.txt"))
    annot_path = _require(name, os.path.join(ddir, sub, "goasp_annot.dat"))
    base = os.path.join(ddir, sub, "goasp.fasta")
    for ext in (".pin", ".psq", ".phr"):
        _require(name, base + ext)

    terms_ns, anc = _go_ancestors(_read_go_graph(graph_path), root, graph_path)
    accs, ann, ann_lines = _read_annotations(annot_path)

    db = _BlastDb(base)
    try:
        rec_of_acc: Dict[str, int] = {}
        for i, acc in enumerate(db.accessions()):
            if acc in rec_of_acc:
                raise ValueError(f"{db.phr}: accession {acc} appears twice (headers {rec_of_acc[acc]} and {i})")
            rec_of_acc[acc] = i
        missing = [k for k, acc in enumerate(accs) if acc not in rec_of_acc]
        if missing:
            k = missing[0]
            raise DataFormatError(
                annot_path, ann_lines[k],
                f"protein {accs[k]} has no sequence in {db.pin} ({len(missing)} proteins have none)",
            )
        rec = np.array([rec_of_acc[a] for a in accs], dtype=np.int64)

        sel = _subset(len(accs), max_examples, seed)
        n = sel.size

        # split by unique sequence
        group_of: Dict[bytes, int] = {}
        groups = np.empty(n, dtype=np.int64)
        seq = db.seq
        for r, i in enumerate(rec[sel].tolist()):
            a, b = db.span(i)
            h = hashlib.blake2b(seq[a:b], digest_size=16).digest()
            groups[r] = group_of.setdefault(h, len(group_of))
        is_test = _group_split(groups, test_fraction, seed)

        # labels: annotated terms plus their same-namespace ancestors (true path rule)
        cache: Dict[Tuple[str, ...], Tuple[str, ...]] = {}
        raw_sets = []
        for i in sel.tolist():
            key = ann[i]
            labs = cache.get(key)
            if labs is None:
                s = set(key)
                for t in key:
                    a = anc.get(t)
                    if a:
                        s.update(terms_ns[j] for j in a)
                labs = cache[key] = tuple(sorted(s))
            raw_sets.append(labs)
        raw_names = sorted({t for labs in cache.values() for t in labs})
        raw_id = {t: j for j, t in enumerate(raw_names)}
        id_cache = {labs: [raw_id[t] for t in labs] for labs in cache.values()}
        indptr, indices = _label_csr([id_cache[labs] for labs in raw_sets])
        kept, Y = _remap_labels(indptr, indices, is_test, len(raw_names))
        not_in_ns = sum(1 for t in raw_names if t not in anc)
        L = int(kept.size)
        n_train, n_test = int((~is_test).sum()), int(is_test.sum())

        # features, streamed in blocks of sequences, written as they are made
        paths = {p: stage.path(p) for p in ("train.txt", "test.txt", "train.jsonl", "test.jsonl")}
        with contextlib.ExitStack() as stack:
            w = {p: stack.enter_context(_atomic_text_writer(path, stage.pending)) for p, path in paths.items()}
            w["train.txt"].write(f"{n_train} {num_features} {L}\n")
            w["test.txt"].write(f"{n_test} {num_features} {L}\n")
            nnz = 0
            r0 = 0
            lengths = np.diff(db.seq_off)[rec[sel]] - 1 if n else np.zeros(0, np.int64)
            while r0 < n:
                r1 = r0 + 1
                total = int(lengths[r0])
                while r1 < n and total + lengths[r1] <= _GO_BLOCK_RESIDUES:
                    total += int(lengths[r1])
                    r1 += 1
                spans = [db.span(i) for i in rec[sel[r0:r1]].tolist()]
                buf = np.frombuffer(b"\x00" + b"\x00".join(seq[a:b] for a, b in spans) + b"\x00", dtype=np.uint8)
                if buf.size and int(buf.max()) >= _ALPHA:
                    bad = next(k for k, (a, b) in enumerate(spans) if b > a and max(seq[a:b]) >= _ALPHA)
                    acc = accs[int(sel[r0 + bad])]
                    raise ValueError(f"{db.psq}: sequence of {acc} has a residue code above {_ALPHA - 1}")
                X = _kmer_features(buf, lengths[r0:r1], max_k, num_features)
                nnz += X.nnz
                Yb = Y[r0:r1]
                te = is_test[r0:r1]
                for part, mask in (("train", ~te), ("test", te)):
                    if not mask.any():
                        continue
                    for block in _xc_lines(X[mask], Yb[mask]):
                        w[f"{part}.txt"].write(block)
                    f = w[f"{part}.jsonl"]
                    for k in np.flatnonzero(mask).tolist():
                        a, b = spans[k]
                        # (a copy: no view may outlive the mmap)
                        text = _ASCII_OF_CODE[np.frombuffer(seq[a:b], np.uint8)].tobytes().decode("ascii")
                        labs = Yb.indices[Yb.indptr[k] : Yb.indptr[k + 1]].tolist()
                        f.write(_jsonl_line(accs[int(sel[r0 + k])], text, labs))
                r0 = r1
    finally:
        db.close()
    _write_lines(stage.path("labels.txt"), (raw_names[j] for j in kept.tolist()), stage.pending)

    meta = _base_meta(name, ddir, seed, test_fraction, max_examples)
    meta.update({
        "N_train": n_train, "N_test": n_test, "D": int(num_features), "L": L,
        "proteins_total": len(accs),
        "unique_sequences": len(group_of),
        "namespace": namespace,
        "namespace_root": root,
        "direct_terms": len({t for key in cache for t in key}),
        "labels_before_dropping": len(raw_names),
        "labels_dropped_not_in_train": len(raw_names) - L,
        "labels_outside_ontology_namespace": not_in_ns,
        **_label_stats(Y, is_test, np.diff(indptr)),
        "nnz_X": int(nnz),
        "max_k": max_k,
        "num_features": int(num_features),
        "features": (
            f"hashed k-mer counts, k = 1..{max_k}: k-mer s (one-letter codes) -> column splitmix64((k << 56) | "
            f"int.from_bytes(s, 'big')) % {num_features} (k-mers holding a gap '-' not counted); value "
            f"log1p(count), rows L2-normalised, rounded to "
            f"{_GO_ROUND_DIGITS} significant digits"
        ),
        "labels": (
            f"annotated GO terms of goasp_annot.dat plus all their {namespace} ancestors through is_a and part_of "
            "(true path rule; the namespace root is a label of every protein); labels.txt has the GO ids; "
            "labels absent from the training split dropped"
        ),
        "input": "the amino-acid sequence, one-letter codes (jsonl 'text')",
        "split": (
            f"by unique sequence: groups of identical sequences in random order (seed {seed}) go to test while "
            "it holds fewer than round(test_fraction * N) proteins"
        ),
        "files": list(_FILES[name]),
    })
    return meta
