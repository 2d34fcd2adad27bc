"""largeout.data: dataset file readers/writers and the synthetic dataset."""

import gzip
import json
import os
import re

import numpy as np
import pytest
import scipy.sparse as sp

from largeout import data
from largeout.data import (
    DataFormatError,
    read_jsonl,
    read_sparse_matrix,
    read_xc,
    synthetic,
    train_test_split,
    write_xc,
)
from largeout.data import formats


def random_xy(seed, n=60, d=40, l=15):
    """Random sparse X [n, d] (float32, awkward values) and Y [n, l], with rows that
    have no labels, no features, or neither."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.15, format="csr", dtype=np.float64, random_state=rng)
    X.data = (rng.standard_normal(X.nnz) * 10.0 ** rng.integers(-8, 8, X.nnz)).astype(np.float32)
    X = X.astype(np.float32)
    Y = sp.random(n, l, density=0.2, format="csr", random_state=rng)
    Y.data[:] = 1
    Y = Y.astype(np.float32).tolil()
    X = X.tolil()
    X[0, :] = 0  # no features, no labels
    Y[0, :] = 0
    X[1, :] = 0  # no features, labels
    Y[1, [0, 3, l - 1]] = 1
    X[2, [0, d - 1]] = [1.5, -2.25]  # features, no labels
    Y[2, :] = 0
    return X.tocsr(), Y.tocsr()


def assert_csr_equal(A, B):
    assert sp.isspmatrix_csr(A) or isinstance(A, sp.csr_array)
    assert A.shape == B.shape and A.dtype == np.float32
    A = A.copy()
    A.sort_indices()
    B = sp.csr_matrix(B, dtype=np.float32)
    B.sum_duplicates()
    B.eliminate_zeros()
    assert np.array_equal(A.indptr, B.indptr)
    assert np.array_equal(A.indices, B.indices)
    assert np.array_equal(A.data, B.data)  # bitwise: float32 values survive the text


def assert_canonical(M):
    """Sorted, duplicate-free indices within each row."""
    for i in range(M.shape[0]):
        row = M.indices[M.indptr[i] : M.indptr[i + 1]]
        assert np.all(np.diff(row) > 0)


def test_exports():
    assert {"read_xc", "write_xc", "read_sparse_matrix", "read_jsonl", "DataFormatError", "synthetic",
            "train_test_split"} <= set(data.__all__)
    assert issubclass(DataFormatError, ValueError)


# ----------------------------------------------------------------------------------
# XC format


@pytest.mark.parametrize("name", ["d.txt", "d.txt.gz"])
def test_xc_round_trip(tmp_path, name):
    X, Y = random_xy(1)
    path = tmp_path / name
    write_xc(path, X, Y)
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == name.endswith(".gz")
    X2, Y2 = read_xc(path)
    assert_csr_equal(X2, X)
    assert_csr_equal(Y2, Y)
    assert set(Y2.data.tolist()) == {1.0}
    assert_canonical(X2)
    assert_canonical(Y2)
    assert os.listdir(tmp_path) == [name]  # no temporary file left
    # str paths and dense inputs work too; an existing file is replaced
    write_xc(str(path), X.toarray(), Y.toarray() > 0)
    X3, Y3 = read_xc(str(path))
    assert_csr_equal(X3, X)
    assert_csr_equal(Y3, Y)


def test_xc_round_trip_many_chunks(tmp_path, monkeypatch):
    X, Y = random_xy(2, n=300)
    path = tmp_path / "d.txt"
    write_xc(path, X, Y)
    monkeypatch.setattr(formats, "_CHUNK_LINES", 7)  # chunk boundaries everywhere
    monkeypatch.setattr(formats, "_WRITE_ROWS", 5)
    path2 = tmp_path / "d2.txt.gz"
    write_xc(path2, X, Y)
    for p in (path, path2):
        X2, Y2 = read_xc(p)
        assert_csr_equal(X2, X)
        assert_csr_equal(Y2, Y)


def test_read_xc_known_file(tmp_path):
    path = tmp_path / "known.txt"
    path.write_text(
        "6 5 4\n"
        "2,0 3:0.5 1:1.25\n"  # labels and features out of order
        " 4:2\n"  # no labels: leading space
        "0:-3e-1 2:7\n"  # no labels: just features
        "3\n"  # labels, no features
        "\n"  # nothing
        "1\t+2:.5E1   0:1.\r\n"  # tabs, signs, exponent, CRLF (the slow path)
    )
    X, Y = read_xc(path)
    assert sp.isspmatrix_csr(X) and sp.isspmatrix_csr(Y)
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert X.shape == (6, 5) and Y.shape == (6, 4)
    Xd = np.zeros((6, 5), np.float32)
    Xd[0, 3], Xd[0, 1] = 0.5, 1.25
    Xd[1, 4] = 2
    Xd[2, 0], Xd[2, 2] = np.float32(-0.3), 7
    Xd[5, 2], Xd[5, 0] = 5, 1
    Yd = np.zeros((6, 4), np.float32)
    Yd[0, [0, 2]] = 1
    Yd[3, 3] = 1
    Yd[5, 1] = 1
    assert np.array_equal(X.toarray(), Xd)
    assert np.array_equal(Y.toarray(), Yd)
    assert X.nnz == 7 and Y.nnz == 4
    assert_canonical(X)
    assert_canonical(Y)


def test_read_xc_gz_written_elsewhere(tmp_path):
    path = tmp_path / "known.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("2 3 2\n1 0:1 2:2\n0,1\n\n\n")  # trailing blank lines are fine
    X, Y = read_xc(path)
    assert np.array_equal(X.toarray(), [[1, 0, 2], [0, 0, 0]])
    assert np.array_equal(Y.toarray(), [[0, 1], [1, 1]])


# ----------------------------------------------------------------------------------
# sparse matrix and JSON lines


def test_read_sparse_matrix(tmp_path):
    path = tmp_path / "trn_X_Y.txt"
    path.write_text("4 6\n0:1 5:1\n\n3:0.25 1:2\n5:1\n")
    M = read_sparse_matrix(path)
    assert sp.isspmatrix_csr(M) and M.dtype == np.float32 and M.shape == (4, 6)
    expected = np.zeros((4, 6), np.float32)
    expected[0, [0, 5]] = 1
    expected[2, 3], expected[2, 1] = 0.25, 2
    expected[3, 5] = 1
    assert np.array_equal(M.toarray(), expected)
    assert_canonical(M)
    gz = tmp_path / "trn_X_Y.txt.gz"
    with gzip.open(gz, "wt") as f:
        f.write(path.read_text())
    assert_csr_equal(read_sparse_matrix(gz), M)


def test_read_jsonl(tmp_path):
    rows = [
        {"uid": "a", "title": "red shoe", "content": "a shoe that is red", "target_ind": [4, 1]},
        {"uid": "b", "title": "blue hat", "target_ind": []},  # no content, no labels
        {"uid": "c", "content": "only content", "target_ind": [0]},
        {"uid": "d", "title": "naïve café", "content": None, "target_ind": [2]},
    ]
    path = tmp_path / "trn.json"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    texts, Y = read_jsonl(path)
    assert texts == ["red shoe a shoe that is red", "blue hat ", " only content", "naïve café "]
    assert sp.isspmatrix_csr(Y) and Y.dtype == np.float32 and Y.shape == (4, 5)
    expected = np.zeros((4, 5), np.float32)
    expected[0, [1, 4]] = 1
    expected[2, 0] = 1
    expected[3, 2] = 1
    assert np.array_equal(Y.toarray(), expected)
    assert_canonical(Y)
    texts, Y = read_jsonl(path, text_fields=("title",), num_labels=10)
    assert texts == ["red shoe", "blue hat", "", "naïve café"] and Y.shape == (4, 10)
    # other field names, gzip
    gz = tmp_path / "tst.json.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "x", "labels": [3]}) + "\n")
    texts, Y = read_jsonl(gz, text_fields="text", label_field="labels")
    assert texts == ["x"] and np.array_equal(Y.toarray(), [[0, 0, 0, 1]])


# ----------------------------------------------------------------------------------
# malformed files: DataFormatError naming the file and the line

GOOD2 = "0,1 0:1 2:0.5\n 1:2\n"  # two valid example lines (lines 2 and 3 under a "N 4 3" header)

XC_BAD = {
    "empty file": ("", 1, "missing header"),
    "short header": ("3 4\n" + GOOD2, 1, "bad header"),
    "non-numeric header": ("3 x 3\n" + GOOD2, 1, "bad header"),
    "negative header": ("2 -4 3\n" + GOOD2, 1, "negative"),
    "too few lines": ("3 4 3\n" + GOOD2, 4, "end of file"),
    "too many lines": ("1 4 3\n" + GOOD2, 3, "more example lines"),
    "label out of range": ("3 4 3\n" + GOOD2 + "2,3 1:1\n", 4, "label 3 out of range"),
    "feature out of range": ("3 4 3\n" + GOOD2 + "2 1:1 4:1\n", 4, "feature index 4 out of range"),
    "negative feature": ("3 4 3\n" + GOOD2 + "-1:1\n", 4, "feature index -1 out of range"),
    "non-numeric label": ("3 4 3\n" + GOOD2 + "a 1:1\n", 4, "non-numeric label 'a'"),
    "empty label": ("3 4 3\n" + GOOD2 + "1,,2 1:1\n", 4, "empty label"),
    "non-numeric index": ("3 4 3\n" + GOOD2 + "1 x:1\n", 4, "non-numeric feature index 'x'"),
    "non-numeric value": ("3 4 3\n" + GOOD2 + "1 1:abc\n", 4, "non-numeric value 'abc'"),
    "nan value": ("3 4 3\n" + GOOD2 + "1 1:nan\n", 4, "non-numeric value 'nan'"),
    "overflowing value": ("3 4 3\n" + GOOD2 + "1 1:1e39\n", 4, "not finite"),
    "token without colon": ("3 4 3\n" + GOOD2 + "1 1:1 2\n", 4, "malformed token '2'"),
    "token with two colons": ("3 4 3\n" + GOOD2 + "1 1:1:1\n", 4, "malformed token '1:1:1'"),
    "duplicate feature": ("3 4 3\n" + GOOD2 + "1 2:1 0:1 2:3\n", 4, "duplicate feature index 2"),
    # (integers past Python's 4,300-digit limit for int(): an error naming the line, not int()'s)
    "huge header count": ("3 4 " + "1" * 5000 + "\n" + GOOD2, 1, "more than 20 digits"),
    "huge label": ("3 4 3\n" + GOOD2 + "1" * 5000 + " 1:1\n", 4, "(5000 characters) out of range"),
    "huge feature index": ("3 4 3\n" + GOOD2 + "1 " + "1" * 5000 + ":1\n", 4, "(5000 characters) out of range"),
    "duplicate label": ("3 4 3\n" + GOOD2 + "2,1,2 1:1\n", 4, "duplicate label 2"),
}


def check_error(excinfo, path, lineno, fragment):
    msg = str(excinfo.value)
    assert path.name in msg
    assert f"line {lineno}:" in msg, msg
    assert fragment in msg, msg
    assert excinfo.value.lineno == lineno
    assert excinfo.value.path == str(path)


@pytest.mark.parametrize("case", list(XC_BAD))
@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_read_xc_malformed(tmp_path, case, suffix):
    text, lineno, fragment = XC_BAD[case]
    path = tmp_path / f"bad{suffix}"
    if suffix.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    with pytest.raises(DataFormatError) as excinfo:
        read_xc(path)
    check_error(excinfo, path, lineno, fragment)


def test_read_xc_error_line_after_many_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_CHUNK_LINES", 16)
    lines = [f"{i % 3} {i % 4}:1" for i in range(100)]
    lines[57] = "1 2:1 2:1"
    lines[80] = "1 9:1"  # a later error is not the one reported
    path = tmp_path / "long.txt"
    path.write_text("100 4 3\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as excinfo:
        read_xc(path)
    check_error(excinfo, path, 59, "duplicate feature index 2")


SPARSE_BAD = {
    "bad header": ("2 4 1\n0:1\n\n", 1, "bad header"),
    "too few lines": ("3 4\n0:1\n\n", 4, "end of file"),
    "too many lines": ("1 4\n0:1\n1:1\n", 3, "more example lines"),
    "index out of range": ("2 4\n0:1\n1:1 4:1\n", 3, "index 4 out of range [0, L)"),
    "non-numeric": ("2 4\n0:1\n1:1 2:x\n", 3, "non-numeric value 'x'"),
    "duplicate": ("2 4\n0:1 0:1\n\n", 2, "duplicate index 0"),
    "huge index": ("2 4\n0:1\n" + "9" * 5000 + ":1\n", 3, "(5000 characters) out of range"),
}


@pytest.mark.parametrize("case", list(SPARSE_BAD))
def test_read_sparse_matrix_malformed(tmp_path, case):
    text, lineno, fragment = SPARSE_BAD[case]
    path = tmp_path / "trn_X_Y.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError) as excinfo:
        read_sparse_matrix(path)
    check_error(excinfo, path, lineno, fragment)


GOOD_JSON = '{"title": "t", "content": "c", "target_ind": [0, 2]}\n'
JSONL_BAD = {
    "invalid json": (GOOD_JSON + '{"title": "t", \n', 2, "invalid JSON"),
    "not an object": (GOOD_JSON + "[1, 2]\n", 2, "expected a JSON object"),
    "text not a string": (GOOD_JSON + '{"title": 5, "target_ind": []}\n', 2, "text field 'title'"),
    "missing labels": (GOOD_JSON + '{"title": "t"}\n', 2, "missing label field 'target_ind'"),
    "labels not a list": (GOOD_JSON + '{"target_ind": 3}\n', 2, "not a list"),
    "non-integer label": (GOOD_JSON + "\n" + '{"target_ind": [1.5]}\n', 3, "label 1.5 is not an integer"),
    "negative label": (GOOD_JSON + '{"target_ind": [-1]}\n', 2, "label -1 out of range"),
    "label out of range": (GOOD_JSON + '{"target_ind": [1, 3]}\n', 2, "label 3 out of range [0, 3)"),
    "duplicate label": (GOOD_JSON + '{"target_ind": [1, 1]}\n', 2, "duplicate label 1"),
    "huge label": (GOOD_JSON + '{"target_ind": [' + "1" * 5000 + ']}\n', 2, "invalid JSON"),
}


@pytest.mark.parametrize("case", list(JSONL_BAD))
def test_read_jsonl_malformed(tmp_path, case):
    text, lineno, fragment = JSONL_BAD[case]
    path = tmp_path / "trn.json"
    path.write_text(text)
    with pytest.raises(DataFormatError) as excinfo:
        read_jsonl(path, num_labels=3)
    check_error(excinfo, path, lineno, fragment)


@pytest.mark.parametrize("label", [2**31 - 1, 2**32 + 1, 2**40, 2**70])
def test_read_jsonl_label_past_int32_columns(tmp_path, label):
    # Without num_labels the bound is the largest column count a CSR matrix with int32 indices
    # takes: a larger label is an error naming the line, never wrapped into a small column.
    path = tmp_path / "trn.json"
    path.write_text(GOOD_JSON + '{"target_ind": [1, %d]}\n' % label)
    with pytest.raises(DataFormatError) as excinfo:
        read_jsonl(path)
    check_error(excinfo, path, 2, f"label {label} out of range [0, 2147483647)")


def test_read_jsonl_bad_arguments(tmp_path):
    path = tmp_path / "trn.json"
    path.write_text(GOOD_JSON)
    with pytest.raises(TypeError, match="text_fields must be a string or an iterable of strings; got 5"):
        read_jsonl(path, text_fields=5)
    with pytest.raises(ValueError, match="num_labels must be an integer in"):
        read_jsonl(path, num_labels=2**31)
    for bad in (float("nan"), float("inf"), "abc", [3], 2.5):
        with pytest.raises(ValueError, match="num_labels must be an integer in .* or None; got"):
            read_jsonl(path, num_labels=bad)
    for bad in (5, ["target_ind"]):
        with pytest.raises(TypeError, match="label_field must be a string; got"):
            read_jsonl(path, label_field=bad)
    with pytest.raises(ValueError, match="text_fields must name at least one field"):
        read_jsonl(path, text_fields=())


def test_read_jsonl_text_fields_no_example_has(tmp_path):
    # A misspelt field (present on no line) is an error naming the fields the file has; a
    # field that only some lines have, or one of several that no line has, is not.
    path = tmp_path / "trn.json"
    path.write_text(GOOD_JSON + '{"content": "d", "target_ind": [1]}\n')
    with pytest.raises(ValueError, match="none of its 2 examples has any of the text_fields \\['titel'\\]; "
                                         "the first example's fields are \\['content', 'target_ind', 'title'\\]"):
        read_jsonl(path, text_fields=("titel",))
    texts, _ = read_jsonl(path, text_fields=("title",))
    assert texts == ["t", ""]
    texts, _ = read_jsonl(path, text_fields=("titel", "content"))
    assert texts == [" c", " d"]


@pytest.mark.parametrize("reader, good, n", [
    ("xc", "1,2 0:1.5 3:2\n", 3000),
    ("jsonl", GOOD_JSON, 2500),
])
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_not_utf8_names_its_line(tmp_path, reader, good, n, gz, eol):
    # The text reader decodes blocks of many lines: the error must still name the line, at any
    # of the line ends the reader takes.
    lines = [good] * n
    bad = n - 7
    lines[bad - 1] = lines[bad - 1].replace("1", "\xe91" if reader == "xc" else "1", 1)
    if reader == "jsonl":
        lines[bad - 1] = GOOD_JSON.replace('"t"', '"caf\xe9"')
    blob = "".join(lines).replace("\n", eol).encode("latin-1")
    if reader == "xc":
        blob = f"{n} 4 3{eol}".encode() + blob
        bad += 1  # (the header is line 1)
    path = tmp_path / ("d.txt" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(blob) if gz else blob)
    with pytest.raises(DataFormatError) as excinfo:
        read_xc(path) if reader == "xc" else read_jsonl(path, num_labels=3)
    check_error(excinfo, path, bad, "not valid UTF-8 text")


def test_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_xc(tmp_path / "nope.txt")


def test_corrupt_gzip(tmp_path):
    X, Y = random_xy(4, n=2000)
    path = tmp_path / "d.txt.gz"
    write_xc(path, X, Y)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="d.txt.gz, line [0-9]+: corrupt gzip"):
        read_xc(path)


def test_written_files_take_the_fast_path(tmp_path, monkeypatch):
    X, Y = random_xy(5, n=500)
    path = tmp_path / "d.txt"
    write_xc(path, X, Y)

    def no_slow_path(*args, **kwargs):
        raise AssertionError("the line-by-line parser was used")

    monkeypatch.setattr(formats, "_parse_slow", no_slow_path)
    X2, Y2 = read_xc(path)
    assert_csr_equal(X2, X)
    assert_csr_equal(Y2, Y)


def test_fast_and_slow_parsers_agree():
    """The vectorised chunk parser accepts only what the line-by-line parser (the
    reference, which also words the errors) accepts, with identical results."""
    rnd = np.random.default_rng(0)
    tokens = ["0:1", "3:0.5", "2:1e-3", "1:.5", "4:+2", "0:5.", "3:-1", "5:7", "2:1e50", "1:2:3", "x:1", "1:",
              ":1", "2", "1:1e", "1:e5", "1:1-2", "01:3", "+1:2", "1.0:2", "1e0:2", "-1:1", "1:nan", "1:1_0",
              "1:\u0661", "1:2\u00a03:4", "1:1\x1c2:1"]
    heads = ["0", "1,2", "3,0", "2,2", "5", "1,", ",1", "a", "+1", "01", "1,,2", "", "\u0661"]
    accepted = 0
    for _ in range(3000):
        lines = []
        for _ in range(rnd.integers(1, 5)):
            line = " ".join(rnd.choice(tokens, rnd.integers(0, 5)).tolist())
            if line and rnd.random() < 0.3:  # change one character
                i = int(rnd.integers(len(line)))
                line = line[:i] + rnd.choice(list("0123456789:,.eE+- \tx")) + line[i + 1 :]
            head = str(rnd.choice(heads))
            sep = str(rnd.choice([" ", "\t", "  "]))
            lines.append((head + sep if head else "") + line + str(rnd.choice(["\n", "\r\n", ""])))
        for with_labels in (True, False):
            fast = formats._parse_fast(lines, with_labels, 6, 4)
            if fast is None:
                continue
            accepted += 1
            slow = formats._parse_slow("f", 2, lines, with_labels, 6, 4, "D")  # must not raise
            assert fast.keys() == slow.keys()
            for key in fast:
                for a, b in zip(fast[key], slow[key]):
                    assert np.array_equal(np.asarray(a, dtype=b.dtype), b), (lines, key)
    assert accepted > 50


# ----------------------------------------------------------------------------------
# writers: validated first, atomic


@pytest.mark.parametrize("name", ["out.txt", "out.txt.gz"])
def test_write_xc_failure_leaves_nothing(tmp_path, name, monkeypatch):
    X, Y = random_xy(3)
    path = tmp_path / name
    with pytest.raises(ValueError, match=r"X and Y .*same number of rows"):
        write_xc(path, X, Y[:-1])
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"\bX\b.*2-D"):
        write_xc(path, np.zeros(5), Y)
    with pytest.raises(ValueError, match=r"\bY\b.*2-D"):
        write_xc(path, X, np.zeros((X.shape[0], 2, 2)))
    bad = X.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match=r"\bX\b.*non-finite"):
        write_xc(path, bad, Y)
    with pytest.raises(TypeError, match="X must hold real numbers; got dtype complex64"):
        write_xc(path, X.toarray() + 1j, Y)
    with pytest.raises(TypeError, match="Y must hold real numbers; got dtype complex"):
        write_xc(path, X, sp.csr_matrix(Y.toarray() * (1 + 1j)))
    with pytest.raises(TypeError, match="Y must be numeric; got dtype <U1"):
        write_xc(path, X, np.full(Y.shape, "a"))
    for scale in (0.5, -1.0, np.nan):  # scores, not labels
        with pytest.raises(ValueError, match="Y must hold 0/1 labels, as largeout.metrics takes them; got the value"):
            write_xc(path, X, Y * scale)
    assert os.listdir(tmp_path) == []

    # an existing file survives a rejected write and a write that fails halfway
    path.write_bytes(b"precious")
    os.utime(path, (1_000_000, 1_000_000))
    with pytest.raises(ValueError):
        write_xc(path, X, Y[:-1])

    def failing_lines(X, Y):
        yield "0 0:1\n" * 1000
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(formats, "_xc_lines", failing_lines)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_xc(path, X, Y)
    assert path.read_bytes() == b"precious" and os.stat(path).st_mtime == 1_000_000
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("name", ["out.txt", "out.txt.gz"])
def test_write_xc_through_links_and_into_protected_places(tmp_path, name):
    # A symbolic link is written through (the target gets the data, the link stays a link); a
    # read-only file and a missing folder are errors naming the path, and nothing is written.
    X, Y = random_xy(3)
    real = tmp_path / "data" / name
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / ("link" + name[3:])
    link.symlink_to(real)
    write_xc(link, X, Y)
    assert link.is_symlink() and os.readlink(link) == str(real)
    X2, Y2 = read_xc(real)
    assert np.array_equal(X2.toarray(), X.toarray()) and np.array_equal(Y2.toarray(), Y.toarray())
    assert sorted(os.listdir(real.parent)) == [name]
    real.chmod(0o444)
    before = real.read_bytes()
    with pytest.raises(PermissionError, match=f"cannot write {link}: the file is read-only"):
        write_xc(link, X[:2], Y[:2])
    assert real.read_bytes() == before and sorted(os.listdir(real.parent)) == [name]
    real.chmod(0o644)
    missing = tmp_path / "nodir" / name
    with pytest.raises(FileNotFoundError, match=f"cannot write {missing}: its folder .*nodir does not exist"):
        write_xc(missing, X, Y)


@pytest.mark.parametrize("link_name, target_name", [("d.txt.gz", "blob"), ("d.txt", "blob.gz"),
                                                     ("D.TXT.GZ", "blob.txt")])
def test_write_xc_compression_follows_the_name_given_not_a_links_target(tmp_path, link_name, target_name):
    # read_xc decides gzip from the name it is given: write_xc must decide the same way,
    # even when the name is a link to a file named otherwise.
    X, Y = random_xy(5)
    real = tmp_path / target_name
    real.write_bytes(b"old")
    link = tmp_path / link_name
    link.symlink_to(real)
    write_xc(link, X, Y)
    assert link.is_symlink()
    with open(real, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == link_name.lower().endswith(".gz")
    X2, Y2 = read_xc(link)
    assert_csr_equal(X2, X)
    assert_csr_equal(Y2, Y)
    assert sorted(os.listdir(tmp_path)) == sorted([link_name, target_name])


@pytest.mark.parametrize("name", ["t.txt", "t.txt.gz"])
def test_write_xc_drops_values_that_are_zero_in_float32(tmp_path, name):
    # 1e-50 is non-zero in float64 but 0 in float32: it is a zero, not an ``f:0`` token.
    X = sp.csr_matrix(np.array([[1e-50, 0.75, -1e-60], [2.5, 0.0, 1e-50]], dtype=np.float64))
    Y = sp.csr_matrix(np.array([[1, 0], [0, 1]], dtype=np.float32))
    path = tmp_path / name
    write_xc(path, X, Y)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    assert lines == ["2 3 2", "0 1:0.75", "1 0:2.5"]
    X2, Y2 = read_xc(path)
    assert X2.nnz == 2 and bool((X2.data != 0).all())
    assert np.array_equal(X2.toarray(), X.astype(np.float32).toarray())
    assert_csr_equal(Y2, Y)


# ----------------------------------------------------------------------------------
# synthetic data


def test_synthetic_deterministic_and_well_formed():
    X, Y = synthetic(2000, 3000, 500, seed=7)
    X2, Y2 = synthetic(2000, 3000, 500, seed=7)
    for A, B in ((X, X2), (Y, Y2)):
        for attr in ("data", "indices", "indptr"):
            a, b = getattr(A, attr), getattr(B, attr)
            assert a.dtype == b.dtype and np.array_equal(a, b)  # bitwise identical
    X3, Y3 = synthetic(2000, 3000, 500, seed=8)
    assert (X3 != X).nnz > 0 and (Y3 != Y).nnz > 0

    assert sp.isspmatrix_csr(X) and sp.isspmatrix_csr(Y)
    assert X.shape == (2000, 3000) and Y.shape == (2000, 500)
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert_canonical(X)
    assert_canonical(Y)
    labels_per_row = np.diff(Y.indptr)
    assert labels_per_row.min() >= 1
    assert 2.7 < labels_per_row.mean() < 3.3  # avg_labels = 3
    assert np.all(Y.data == 1)
    assert np.all(X.data > 0)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert 0.01 < X.nnz / (2000 * 3000) < 0.03  # feature_density = 0.02


@pytest.mark.parametrize("seed", [None, -1, 1.5, "3", True])
def test_synthetic_seed_must_be_a_non_negative_integer(seed):
    # (seed=None would draw OS entropy: the same arguments would give different data)
    with pytest.raises(ValueError, match=f"seed must be an integer >= 0; got {re.escape(repr(seed))}"):
        synthetic(30, 10, 5, seed=seed)
    X, Y = synthetic(30, 10, 5, seed=np.int64(3))
    X2, Y2 = synthetic(30, 10, 5, seed=3)
    assert (X != X2).nnz == 0 and (Y != Y2).nnz == 0


@pytest.mark.parametrize("power", [400, 1000, 1e6])
def test_synthetic_with_a_huge_power_puts_the_mass_on_the_head(power):
    # (r + 5)^-power underflows to 0 for every rank: the probabilities are computed stably
    n, l = 300, 50
    X, Y = synthetic(n, 100, l, seed=3, power=power)
    X2, Y2 = synthetic(n, 100, l, seed=3, power=power)
    assert (X != X2).nnz == 0 and (Y != Y2).nnz == 0
    assert X.shape == (n, 100) and Y.shape == (n, l)
    assert np.isfinite(X.data).all() and np.all(X.data > 0)
    assert_canonical(X)
    assert_canonical(Y)
    per_row = np.diff(Y.indptr)
    assert per_row.min() >= 1 and 2.5 < per_row.mean() < 3.5
    # each label is (almost surely) the most probable one left: a row with m labels holds
    # the m head labels, so the label sets are nested and the counts strictly decrease
    sets = sorted((set(Y.indices[Y.indptr[i] : Y.indptr[i + 1]].tolist()) for i in range(n)), key=len)
    assert all(a <= b for a, b in zip(sets, sets[1:]))
    counts = label_counts(Y)
    assert counts[0] == n
    used = counts[counts > 0]
    assert used.size == per_row.max() and np.all(np.diff(used) < 0)


def label_counts(Y):
    return np.sort(np.asarray(Y.sum(axis=0)).ravel())[::-1]


def loglog_slope(counts, lo=20, hi=500):
    r = np.arange(lo, hi + 1)
    return np.polyfit(np.log(r), np.log(counts[lo - 1 : hi]), 1)[0]


def test_synthetic_label_frequencies_follow_a_power_law():
    _, Y = synthetic(20000, 1000, 10000, seed=0, feature_density=0.01)
    c = label_counts(Y)
    assert c[0] > 10 * max(np.median(c), 1)  # head much more frequent than the median label
    slope = loglog_slope(c)
    assert -1.3 < slope < -0.8, slope  # power = 1.1 (flattened slightly at the head)
    _, Y15 = synthetic(20000, 1000, 10000, seed=0, feature_density=0.01, power=1.5)
    assert loglog_slope(label_counts(Y15)) < slope - 0.2


def test_synthetic_is_learnable():
    X, Y = synthetic(5000, 2000, 1000, seed=0)
    X_tr, Y_tr, X_te, Y_te = train_test_split(X, Y, test_fraction=0.2, seed=0)
    # nearest-centroid linear scorer: W = Y^T X, score = X W^T
    W = (Y_tr.T @ X_tr).tocsr()
    scores = (X_te @ W.T).toarray()
    pred = scores.argmax(axis=1)
    p1 = float(np.asarray(Y_te[np.arange(Y_te.shape[0]), pred]).mean())
    top = int(np.asarray(Y_tr.sum(axis=0)).ravel().argmax())
    baseline = float(Y_te[:, top].toarray().mean())
    print(f"P@1 = {p1:.3f}, most-frequent-label baseline = {baseline:.3f}")
    assert baseline > 0.02
    assert p1 >= 3 * baseline and p1 > 0.5


def test_train_test_split():
    n = 101
    X = sp.csr_matrix(np.arange(1, n + 1, dtype=np.float32)[:, None])  # row i holds i + 1
    Y = sp.csr_matrix(np.eye(n, dtype=np.float32))
    X_tr, Y_tr, X_te, Y_te = train_test_split(X, Y, 0.3, seed=5)
    assert X_te.shape == (30, 1) and X_tr.shape == (71, 1) and Y_te.shape == (30, n)
    ids_tr, ids_te = X_tr.toarray().ravel(), X_te.toarray().ravel()
    assert np.all(np.diff(ids_tr) > 0) and np.all(np.diff(ids_te) > 0)  # order kept
    assert sorted(np.concatenate([ids_tr, ids_te]).tolist()) == list(range(1, n + 1))
    assert np.array_equal(Y_te.indices, ids_te.astype(int) - 1)  # X and Y rows stay paired
    again = train_test_split(X, Y, 0.3, seed=5)
    assert all((a != b).nnz == 0 for a, b in zip((X_tr, Y_tr, X_te, Y_te), again))
    other = train_test_split(X, Y, 0.3, seed=6)
    assert (other[2] != X_te).nnz > 0
    with pytest.raises(ValueError):
        train_test_split(X, Y[:-1], 0.3, seed=0)
