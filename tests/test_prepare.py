"""largeout.data.prepare: real datasets from Debian packages (WordNet, GO), on tiny
fake source trees written in the packages' exact formats."""

import json
import math
import os
import re
import struct
from collections import Counter

import numpy as np
import pytest

from largeout.data import DataFormatError, read_jsonl, read_xc
from largeout import data as lodata
from largeout.data.prepare import kmer_feature_index, prepare

# ----------------------------------------------------------------------------------
# fake WordNet (data.noun / index.noun as in Debian's wordnet-base)

WN_LICENSE = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  By obtaining, using  ",
    "  3   ",
    "  4 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  ",
]

# key: (lex_filenum, [(word, lex_id)], [(pointer_symbol, target key or offset, pos, source/target)], gloss)
WN_SYNSETS = {
    "E": ("03", [("entity", 0)], [("~", "P", "n", "0000"), ("~", "A", "n", "0000")],
          "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)"),
    "P": ("03", [("physical_entity", 0)], [("@", "E", "n", "0000"), ("~", "O", "n", "0000")],
          "an entity that has physical existence"),
    "A": ("03", [("abstraction", 0), ("abstract_entity", 0)], [("@", "E", "n", "0000"), ("~", "I", "n", "0000")],
          "a general concept formed by extracting common features from specific examples"),
    "O": ("03", [("object", 0), ("physical_object", 0)], [("@", "P", "n", "0000"), ("~", "D", "n", "0000")],
          'a tangible and visible entity; an entity that can cast a shadow; "it was full of rackets, balls and other objects"'),
    "D": ("05", [("dog", 0), ("domestic_dog", 0), ("Canis_familiaris", 0)],
          [("@", "O", "n", "0000"), ("+", "01234567", "v", "0101"), ("~i", "F", "n", "0000"), ("~i", "L", "n", "0000")],
          "a member of the genus Canis (probably descended from the common wolf) that has been domesticated by man"),
    "F": ("18", [("Fido", 0)], [("@i", "D", "n", "0000")],
          "a famous dog of the author; an object of affection"),
    "L": ("18", [("Lassie", 0)], [("@i", "D", "n", "0000")],
          "a fictional dog that is a famous collie; the object of a long series of films"),
    "C": ("05", [("cat", 0), ("true_cat", 0)], [("@", "O", "n", "0000")],
          "a small domesticated animal of the genus Felis; an object that purrs"),
    "I": ("09", [("idea", 0), ("thought", 0)], [("@", "A", "n", "0000")],
          "the content of cognition; a concept formed by the mind"),
    "X": ("18", [("dog", 1), ("frump", 0)], [("@", "I", "n", "0000")],
          "a dull unattractive unpleasant girl or woman; a concept of the author"),
    "W": ("05", [("wolf", 0)], [("@", "O", "n", "0000")],
          "any of various predatory carnivorous canine mammals of the genus Canis; the common wolf"),
    "T": ("09", [("theory", 0)], [("@", "I", "n", "0000")],
          "a well-substantiated explanation of some aspect of the natural world; a concept of the mind"),
}


def wn_offsets():
    """Byte offset of every synset line, as in the real files (offsets have a fixed
    width of 8 digits, so the lengths do not depend on the values)."""
    pos = sum(len(h) + 1 for h in WN_LICENSE)
    offs = {}
    for key in WN_SYNSETS:
        offs[key] = pos
        pos += len(wn_line(key, {k: 0 for k in WN_SYNSETS})) + 1
    return offs


def wn_line(key, offs):
    lex, words, ptrs, gloss = WN_SYNSETS[key]
    t = [f"{offs[key]:08d}", lex, "n", f"{len(words):02x}"]
    for w, lid in words:
        t += [w, f"{lid:x}"]
    t.append(f"{len(ptrs):03d}")
    for sym, target, pos, st in ptrs:
        off = offs[target] if target in offs else int(target)
        t += [sym, f"{off:08d}", pos, st]
    return " ".join(t) + " | " + gloss + "  "


def write_wordnet(d, synsets=None):
    d.mkdir(parents=True, exist_ok=True)
    offs = wn_offsets()
    lines = WN_LICENSE + [wn_line(k, offs) for k in WN_SYNSETS]
    (d / "data.noun").write_text("\n".join(lines) + "\n")
    senses = {}
    for key, (_, words, ptrs, _) in WN_SYNSETS.items():
        for w, _ in words:
            senses.setdefault(w.lower(), []).append((key, ptrs))
    idx = list(WN_LICENSE)
    for lemma in sorted(senses):
        keys = [k for k, _ in senses[lemma]]
        syms = sorted({p[0] for _, ptrs in senses[lemma] for p in ptrs})
        idx.append(f"{lemma} n {len(keys)} {len(syms)} {' '.join(syms)} {len(keys)} 0 "
                   + " ".join(f"{offs[k]:08d}" for k in keys) + "  ")
    (d / "index.noun").write_text("\n".join(idx) + "\n")
    return offs


def wn_name(key):
    return {"E": "entity.n.01", "P": "physical_entity.n.01", "O": "object.n.01", "D": "dog.n.01",
            "A": "abstraction.n.01", "I": "idea.n.01", "X": "dog.n.02"}[key]


# ----------------------------------------------------------------------------------
# fake metastudent-data (BLAST v4 protein databases, goasp_annot.dat, goGraph.txt)

NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"

GO_GRAPH = [  # parent, child, relation
    ("GO:0003674", "GO:0005488", "is_a"),  # binding
    ("GO:0005488", "GO:0000166", "is_a"),  # nucleotide binding
    ("GO:0000166", "GO:0005524", "is_a"),  # ATP binding
    ("GO:0005488", "GO:0005524", "is_a"),  # a second path
    ("GO:0003674", "GO:0003824", "is_a"),  # catalytic activity
    ("GO:0003824", "GO:0016787", "is_a"),  # hydrolase activity
    ("GO:0003824", "GO:0016817", "is_a"),
    ("GO:0016787", "GO:0016817", "part_of"),  # hydrolase reached through part_of only
    ("GO:0003674", "GO:0030234", "is_a"),  # enzyme regulator activity
    ("GO:0003824", "GO:0030234", "regulates"),  # not propagated
    ("GO:0008152", "GO:0016787", "part_of"),  # cross-namespace: not propagated into MF
    ("obsolete_molecular_function", "GO:0000005", "is_a"),
    ("GO:0008150", "GO:0008152", "is_a"),  # metabolic process
    ("GO:0008150", "GO:0009987", "is_a"),  # cellular process
    ("GO:0008152", "GO:0044237", "is_a"),
    ("GO:0009987", "GO:0044237", "is_a"),  # cellular metabolic process
    ("GO:0008152", "GO:0006096", "is_a"),
    ("GO:0044237", "GO:0006096", "part_of"),
    ("GO:0009987", "GO:0008152", "positively_regulates"),  # not propagated
]

SEQ_A = "MKVLAAGIVGLLLAGCSSHKEEQPAVAEAPKTE"
SEQ_B = "MSTNPKPQRKTKRNTNRRPQDVKFPGG"
MF_PROTEINS = [  # accession, sequence, GO terms as in goasp_annot.dat (repeated per evidence)
    ("P11111", SEQ_A, ["GO:0005524", "GO:0005524"]),
    ("Q22222", SEQ_A, ["GO:0016817"]),  # same sequence as P11111
    ("A0A333", "MDDLLXQTWUVCCK", ["GO:0030234", "GO:0030234", "GO:0030234"]),
    ("B44444", SEQ_B, ["GO:0000166", "GO:0016787"]),
    ("C55555", "GAVLIMFWPSTCYNQDEKRH", ["GO:0005488"]),
    ("D66666", SEQ_B, ["GO:0003824"]),  # same sequence as B44444
    ("E77777", SEQ_B, ["GO:0005524"]),  # and again
    ("F88888", "MKKLLPTAAAGLLLLAAQPAMA", ["GO:0016787", "GO:0005524"]),
    ("G99999", "MAHHHHHHVDDDDK", ["GO:0000005"]),  # an obsolete term
    ("H00000", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQ", ["GO:0003824", "GO:0000166"] + ["GO:0005524"] * 30),  # > 255
    ("J12345", "MTMDKSELVQKAKLAEQAERYDDMAAAMKAVTE", ["GO:0016817", "GO:0030234"]),
    ("K12345", "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG", ["GO:0005524"] * 15),  # a title of 128..255 bytes
    ("L12345", "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG", ["GO:0016787"]),
]
BP_PROTEINS = [
    ("P11111", SEQ_A, ["GO:0006096"]),
    ("R12345", "MGLSDGEWQQVLNVWGKVEADIAGHGQEVLIRLFTGHPETLEKFDKFKHLK", ["GO:0044237", "GO:0044237"]),
    ("S12345", SEQ_A, ["GO:0009987"]),
    ("T12345", "MVHLTPEEKSAVTALWGKVNVDEVGGEALGRLLVVYPWTQRFFESFGDLS", ["GO:0008152"]),
    ("U12345", "MNIFEMLRIDEGLRLKIYKDTEGYYTIGIGHLLTKSPSLNAAKSELDKAIGRN", ["GO:0006096", "GO:0009987"]),
]


def ber_len(n):
    if n < 0x80:
        return bytes([n])
    if n < 0x100:
        return bytes([0x81, n])
    return bytes([0x82, n >> 8, n & 0xFF])


def defline(title, i):
    t = title.encode()
    return (b"\x30\x80\x30\x80\xa0\x80\x1a" + ber_len(len(t)) + t + b"\x00\x00"
            + b"\xa1\x80\x30\x80\xaa\x80\x30\x80\xa0\x80\x1a\x09BL_ORD_ID\x00\x00\xa1\x80\xa0\x80\x02\x01"
            + bytes([i]) + b"\x00" * 13 + b"\xa2\x80\x02\x01\x00" + b"\x00" * 7)


def write_blastdb(base, records):
    """A BLAST version-4 protein database (.pin/.psq/.phr) as makeblastdb writes it
    for a FASTA file without parsed sequence ids."""
    psq, phr = bytearray(b"\x00"), bytearray()
    soff, hoff = [], []
    for i, (title, seq) in enumerate(records):
        soff.append(len(psq))
        psq += bytes(NCBISTDAA.index(c) for c in seq) + b"\x00"
        hoff.append(len(phr))
        phr += defline(title, i)
    soff.append(len(psq))
    hoff.append(len(phr))
    name = b"dataset_201401/MFO/goasp.fasta"
    date = b"Jan 20, 2022  10:32 AM\x00\x00\x00\x00"
    n = len(records)
    pin = (struct.pack(">ii", 4, 1) + struct.pack(">i", len(name)) + name + struct.pack(">i", len(date)) + date
           + struct.pack(">i", n) + struct.pack("<q", sum(len(s) for _, s in records))
           + struct.pack(">i", max(len(s) for _, s in records))
           + np.array(hoff, ">i4").tobytes() + np.array(soff, ">i4").tobytes())
    for ext, data in ((".pin", pin), (".psq", psq), (".phr", phr)):
        with open(base + ext, "wb") as f:
            f.write(bytes(data))


def write_go(root, mf=MF_PROTEINS, bp=BP_PROTEINS):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataversion.txt").write_text("201401\n")
    d = root / "dataset_201401"
    d.mkdir(parents=True)
    (d / "goGraph.txt").write_text("".join(f"{p}\t{c}\t1\t{r}\n" for p, c, r in GO_GRAPH))
    (d / "nameMapping.txt").write_text("GO:0003674\tmolecular_function\nGO:0008150\tbiological_process\n")
    for sub, prots in (("MFO", mf), ("BPO", bp)):
        (d / sub).mkdir()
        (d / sub / "goasp_annot.dat").write_text("".join(f"{a}\t" + "\t".join(t) + "\n" for a, _, t in prots))
        recs = [(f"{a}|" + ",".join(t), s) for a, s, t in prots]
        if sub == "BPO":
            recs = recs[::-1]  # sequences are found by accession, not by position
        write_blastdb(str(d / sub / "goasp.fasta"), recs)
    return d


def read_out(out):
    """Per example id: (split, text, label names) from the jsonl files and labels.txt."""
    names = (out / "labels.txt").read_text().splitlines()
    res = {}
    for part in ("train", "test"):
        for line in (out / f"{part}.jsonl").read_text().splitlines():
            o = json.loads(line)
            res[o["id"]] = (part, o["text"], {names[j] for j in o["labels"]})
    return res


def dir_files(out):
    return {p: (out / p).read_bytes() for p in sorted(os.listdir(out)) if p != "meta.json"}


# ----------------------------------------------------------------------------------
# WordNet


def test_wordnet_files_and_roundtrip(tmp_path):
    write_wordnet(tmp_path / "wn")
    out = tmp_path / "out"
    meta = prepare("wordnet", tmp_path / "wn", out, seed=0, test_fraction=0.25)
    for f in ("train.txt", "test.txt", "train.jsonl", "test.jsonl", "labels.txt", "vocab.txt", "meta.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "meta.json").read_text()) == meta
    n = len(WN_SYNSETS)
    assert meta["N_train"] + meta["N_test"] == n and meta["N_test"] == round(0.25 * n)
    Xtr, Ytr = read_xc(out / "train.txt")
    Xte, Yte = read_xc(out / "test.txt")
    assert Xtr.shape == (meta["N_train"], meta["D"]) and Xte.shape == (meta["N_test"], meta["D"])
    assert Ytr.shape[1] == Yte.shape[1] == meta["L"] == len((out / "labels.txt").read_text().splitlines())
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert len(vocab) == meta["D"] > 0 and vocab == sorted(vocab)
    # every label occurs in training; tf-idf rows are unit-norm (or empty)
    assert (np.asarray(Ytr.sum(axis=0)).ravel() > 0).all()
    norms = np.sqrt(np.asarray(Xtr.multiply(Xtr).sum(axis=1)).ravel())
    assert np.allclose(norms[norms > 0], 1, atol=1e-5)
    # the jsonl files carry the same labels, row for row
    texts, Yj = read_jsonl(out / "train.jsonl", text_fields="text", label_field="labels", num_labels=meta["L"])
    assert len(texts) == meta["N_train"] and (Yj != Ytr).nnz == 0
    glosses = {v[3] for v in WN_SYNSETS.values()}
    assert set(texts) <= glosses


def test_wordnet_labels_are_hypernym_closure(tmp_path):
    write_wordnet(tmp_path / "wn")
    out = tmp_path / "out"
    meta = prepare("wordnet", tmp_path / "wn", out, test_fraction=0.0)
    ex = read_out(out)
    assert meta["N_test"] == 0 and len(ex) == len(WN_SYNSETS)
    # Fido --@i--> dog --@--> object --@--> physical_entity --@--> entity
    assert ex["fido.n.01"][2] == {"dog.n.01", "object.n.01", "physical_entity.n.01", "entity.n.01"}
    assert ex["dog.n.01"][2] == {"object.n.01", "physical_entity.n.01", "entity.n.01"}
    assert ex["dog.n.02"][2] == {"idea.n.01", "abstraction.n.01", "entity.n.01"}  # the second sense of "dog"
    assert ex["entity.n.01"][2] == set()
    assert ex["fido.n.01"][1] == WN_SYNSETS["F"][3]
    # labels are the synsets that are somebody's hypernym, in offset order
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels == [wn_name(k) for k in ("E", "P", "A", "O", "D", "I")]
    assert meta["L"] == 6


def test_wordnet_tfidf_values(tmp_path):
    write_wordnet(tmp_path / "wn")
    out = tmp_path / "out"
    prepare("wordnet", tmp_path / "wn", out, test_fraction=0.0)
    X, _ = read_xc(out / "train.txt")
    vocab = (out / "vocab.txt").read_text().splitlines()
    docs = [json.loads(l)["text"] for l in (out / "train.jsonl").read_text().splitlines()]
    toks = [re.findall(r"[a-z0-9]+", d.lower()) for d in docs]
    df = Counter(t for d in toks for t in set(d))
    assert vocab == sorted(t for t, c in df.items() if c >= 2)
    n = len(docs)
    for r, d in enumerate(toks):
        c = Counter(t for t in d if t in df and df[t] >= 2)
        v = {vocab.index(t): k * (math.log((1 + n) / (1 + df[t])) + 1) for t, k in c.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        row = X[r].toarray().ravel()
        expect = np.zeros_like(row)
        for j, x in v.items():
            expect[j] = x / norm
        assert np.allclose(row, expect, atol=1e-6)


def test_wordnet_num_features_caps_vocabulary(tmp_path):
    write_wordnet(tmp_path / "wn")
    meta = prepare("wordnet", tmp_path / "wn", tmp_path / "out", num_features=5, test_fraction=0.0)
    assert meta["D"] == 5 and len((tmp_path / "out" / "vocab.txt").read_text().splitlines()) == 5


def test_wordnet_deterministic_and_seeded(tmp_path):
    write_wordnet(tmp_path / "wn")
    m1 = prepare("wordnet", tmp_path / "wn", tmp_path / "a", seed=3)
    m2 = prepare("wordnet", tmp_path / "wn", tmp_path / "b", seed=3)
    assert dir_files(tmp_path / "a") == dir_files(tmp_path / "b")
    strip = lambda m: {k: v for k, v in m.items() if k not in ("date", "seconds")}  # noqa: E731
    assert strip(m1) == strip(m2)
    splits = set()
    for seed in range(6):
        prepare("wordnet", tmp_path / "wn", tmp_path / f"s{seed}", seed=seed)
        splits.add((tmp_path / f"s{seed}" / "test.jsonl").read_bytes())
    assert len(splits) > 1


def test_wordnet_max_examples(tmp_path):
    write_wordnet(tmp_path / "wn")
    meta = prepare("wordnet", tmp_path / "wn", tmp_path / "out", max_examples=8, seed=1)
    assert meta["N_train"] + meta["N_test"] == 8 and meta["N_test"] == 2
    again = prepare("wordnet", tmp_path / "wn", tmp_path / "out2", max_examples=8, seed=1)
    assert again["N_train"] == meta["N_train"]
    assert dir_files(tmp_path / "out") == dir_files(tmp_path / "out2")


def test_wordnet_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        prepare("wordnet", tmp_path / "nope", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data\.noun.*apt-get install wordnet-base"):
        prepare("wordnet", tmp_path / "empty", out)
    with pytest.raises(ValueError, match="wordnet, go-mf, go-bp"):
        prepare("imagenet", tmp_path / "empty", out)

    src = tmp_path / "wn"
    write_wordnet(src)
    lines = (src / "data.noun").read_text().splitlines()
    first = len(WN_LICENSE)  # 0-based index of the first synset line

    def broken(i, new):
        bad = list(lines)
        bad[i] = new
        (src / "data.noun").write_text("\n".join(bad) + "\n")
        with pytest.raises(DataFormatError) as e:
            prepare("wordnet", src, out)
        assert e.value.lineno == i + 1 and e.value.path.endswith("data.noun")
        return e.value

    broken(first + 3, lines[first + 3].replace(" 002 @ ", " 003 @ ", 1))  # p_cnt disagrees
    broken(first + 1, lines[first + 1].replace(" | ", " ", 1))  # no gloss separator
    broken(first + 2, "x" + lines[first + 2][1:])  # bad offset
    broken(first + 2, "\u00b9" + lines[first + 2][1:])  # a superscript digit (str.isdigit takes it, int not)
    e = broken(first + 5, lines[first + 5].replace("@i ", "@i 0", 1))  # a 9-digit offset
    assert "data.noun, line" in str(e) and "8-digit" in e.reason
    bad_ptr = lines[first + 4].split(" ")
    bad_ptr[bad_ptr.index("@") + 1] = "99999999"  # hypernym of dog -> no such synset
    e = broken(first + 4, " ".join(bad_ptr))
    assert "99999999" in e.reason

    # a hypernym cycle
    offs = wn_offsets()
    cyc = list(lines)
    cyc[first] = cyc[first].replace(" 002 ~ ", " 003 @ %08d n 0000 ~ " % offs["D"], 1)
    (src / "data.noun").write_text("\n".join(cyc) + "\n")
    with pytest.raises(ValueError, match="cycle"):
        prepare("wordnet", src, out)


def test_exported():
    assert lodata.prepare_dataset is prepare and "prepare_dataset" in lodata.__all__


def test_wordnet_bad_arguments(tmp_path):
    write_wordnet(tmp_path / "wn")
    for kw in ({"test_fraction": 1.0}, {"test_fraction": -0.1}, {"max_examples": 0}, {"seed": -1},
               {"num_features": 0}, {"max_k": 0}, {"max_k": 8}):
        with pytest.raises(ValueError):
            prepare("wordnet", tmp_path / "wn", tmp_path / "out", **kw)


def test_cli_prepare(tmp_path, capsys):
    cli = pytest.importorskip("largeout.cli")
    write_wordnet(tmp_path / "wn")
    rc = cli.main(["data", "prepare", "wordnet", "--source", str(tmp_path / "wn"), "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "train.txt").is_file()
    assert json.loads(capsys.readouterr().out)["name"] == "wordnet"
    rc = cli.main(["data", "prepare", "wordnet", "--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "wordnet-base" in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# GO


def expected_row(seq, num_features, max_k):
    cnt = Counter()
    for k in range(1, max_k + 1):
        for i in range(len(seq) - k + 1):
            cnt[kmer_feature_index(seq[i : i + k], num_features)] += 1
    v = {j: math.log1p(c) for j, c in cnt.items()}
    norm = math.sqrt(sum(x * x for x in v.values()))
    row = np.zeros(num_features)
    for j, x in v.items():
        row[j] = x / norm
    return row


def test_go_files_labels_and_features(tmp_path):
    write_go(tmp_path / "msd")
    out = tmp_path / "out"
    meta = prepare("go-mf", tmp_path / "msd", out, num_features=512, test_fraction=0.0)
    for f in ("train.txt", "test.txt", "train.jsonl", "test.jsonl", "labels.txt", "meta.json"):
        assert (out / f).is_file(), f
    assert meta["N_train"] == len(MF_PROTEINS) and meta["N_test"] == 0 and meta["D"] == 512
    assert meta["unique_sequences"] == len({s for _, s, _ in MF_PROTEINS})
    ex = read_out(out)
    # true path rule within the namespace: is_a and part_of, not regulates, not into BP
    assert ex["P11111"][2] == {"GO:0005524", "GO:0000166", "GO:0005488", "GO:0003674"}
    assert ex["Q22222"][2] == {"GO:0016817", "GO:0016787", "GO:0003824", "GO:0003674"}
    assert ex["A0A333"][2] == {"GO:0030234", "GO:0003674"}
    assert ex["G99999"][2] == {"GO:0000005"}  # obsolete: kept, nothing to propagate to
    assert ex["P11111"][1] == SEQ_A and ex["A0A333"][1] == "MDDLLXQTWUVCCK"
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels == sorted(labels) and len(labels) == meta["L"] == 9
    X, Y = read_xc(out / "train.txt")
    assert X.shape == (len(MF_PROTEINS), 512) and Y.shape == (len(MF_PROTEINS), 9)
    _, Yj = read_jsonl(out / "train.jsonl", text_fields="text", label_field="labels", num_labels=9)
    assert (Yj != Y).nnz == 0
    for r, (_, seq, _) in enumerate(MF_PROTEINS):  # train keeps the annotation order
        assert np.allclose(X[r].toarray().ravel(), expected_row(seq, 512, 3), rtol=1e-3, atol=1e-7)


def expected_row_with_gaps(seq, num_features, max_k):
    """expected_row, not counting the k-mers that hold a gap '-'."""
    cnt = Counter()
    for k in range(1, max_k + 1):
        for i in range(len(seq) - k + 1):
            if "-" not in seq[i : i + k]:
                cnt[kmer_feature_index(seq[i : i + k], num_features)] += 1
    row = np.zeros(num_features)
    if cnt:
        v = {j: math.log1p(c) for j, c in cnt.items()}
        norm = math.sqrt(sum(x * x for x in v.values()))
        for j, x in v.items():
            row[j] = x / norm
    return row


@pytest.mark.parametrize("max_k", [3, 5])  # (5: k-mers past the lookup table)
def test_go_gap_residue_does_not_shift_rows(tmp_path, max_k):
    # NCBIstdaa code 0 is both the gap '-' and the .psq separator: a gap inside a
    # sequence must stay in its protein, not move the later proteins' features
    prots = [
        ("GAP001", "MKV-LAAGWQ", ["GO:0005524"]),
        ("GAP002", "-MSTNPKPQR", ["GO:0016787"]),
        ("PLAIN1", SEQ_A, ["GO:0005524"]),
        ("GAP003", "ACDEF--GH-", ["GO:0003824"]),
        ("ALLGAP", "---", ["GO:0005488"]),
        ("PLAIN2", SEQ_B, ["GO:0016787"]),
    ]
    write_go(tmp_path / "msd", mf=prots)
    out = tmp_path / "out"
    meta = prepare("go-mf", tmp_path / "msd", out, num_features=256, test_fraction=0.0, max_k=max_k)
    assert meta["N_train"] == len(prots)
    X, _ = read_xc(out / "train.txt")
    ex = read_out(out)
    for r, (acc, seq, terms) in enumerate(prots):
        assert ex[acc][1] == seq  # the text keeps the gaps
        write_go(tmp_path / f"alone{r}", mf=[(acc, seq, terms)])
        prepare("go-mf", tmp_path / f"alone{r}", tmp_path / f"o{r}", num_features=256, test_fraction=0.0,
                max_k=max_k)
        X1, _ = read_xc(tmp_path / f"o{r}" / "train.txt")
        assert X1.shape == (1, 256)
        assert np.array_equal(X[r].toarray(), X1.toarray()), acc
        assert np.allclose(X[r].toarray().ravel(), expected_row_with_gaps(seq, 256, max_k), rtol=1e-3, atol=1e-7)
    assert X[4].nnz == 0 and X[0].nnz > 0 and X[5].nnz > 0


def test_go_long_kmers_hash_like_the_table(tmp_path):
    write_go(tmp_path / "msd")
    prepare("go-bp", tmp_path / "msd", tmp_path / "out", num_features=1000, test_fraction=0.0, max_k=5)
    X, _ = read_xc(tmp_path / "out" / "train.txt")
    for r, (_, seq, _) in enumerate(BP_PROTEINS):
        assert np.allclose(X[r].toarray().ravel(), expected_row(seq, 1000, 5), rtol=1e-3, atol=1e-7)


def test_go_bp_namespace(tmp_path):
    write_go(tmp_path / "msd")
    out = tmp_path / "out"
    meta = prepare("go-bp", tmp_path / "msd" / "dataset_201401", out, test_fraction=0.0)  # the dataset dir itself
    ex = read_out(out)
    assert ex["P11111"][2] == {"GO:0006096", "GO:0044237", "GO:0008152", "GO:0009987", "GO:0008150"}
    assert ex["T12345"][2] == {"GO:0008152", "GO:0008150"}
    assert meta["D"] == 2**16 and meta["namespace"] == "biological_process"


def test_go_identical_sequences_share_a_split(tmp_path):
    # many copies of a few sequences
    prots = [(f"X{i:05d}", ["MKVL", "MKVLA", "GGGGSG", "MPPA", "ACDEFG", "MKVL" * 3][i % 6] + ("W" * (i % 4 == 0)),
              ["GO:0005524"] if i % 2 else ["GO:0016787"]) for i in range(60)]
    write_go(tmp_path / "msd", mf=prots)
    groups = Counter(s for _, s, _ in prots)
    assert max(groups.values()) > 1
    for seed in range(8):
        out = tmp_path / f"out{seed}"
        meta = prepare("go-mf", tmp_path / "msd", out, seed=seed, test_fraction=0.3)
        ex = read_out(out)
        train = {t for p, t, _ in ex.values() if p == "train"}
        test = {t for p, t, _ in ex.values() if p == "test"}
        assert train and test and not (train & test)
        assert meta["N_test"] >= round(0.3 * 60)
        assert meta["N_test"] - round(0.3 * 60) < max(groups.values())
        Xte, Yte = read_xc(out / "test.txt")
        assert Xte.shape[0] == meta["N_test"] and Yte.shape[1] == meta["L"]


def test_go_deterministic(tmp_path):
    write_go(tmp_path / "msd")
    m1 = prepare("go-mf", tmp_path / "msd", tmp_path / "a", seed=5, test_fraction=0.3)
    m2 = prepare("go-mf", tmp_path / "msd", tmp_path / "b", seed=5, test_fraction=0.3)
    assert dir_files(tmp_path / "a") == dir_files(tmp_path / "b")
    assert {k: v for k, v in m1.items() if k not in ("date", "seconds")} == \
           {k: v for k, v in m2.items() if k not in ("date", "seconds")}
    m3 = prepare("go-mf", tmp_path / "msd", tmp_path / "c", seed=5, test_fraction=0.3, max_examples=7)
    m4 = prepare("go-mf", tmp_path / "msd", tmp_path / "d", seed=5, test_fraction=0.3, max_examples=7)
    assert m3["N_train"] + m3["N_test"] == 7
    assert dir_files(tmp_path / "c") == dir_files(tmp_path / "d")


def _splitmix64_ref(z):
    m = (1 << 64) - 1
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & m
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_kmer_feature_index_is_stable():
    # pinned: the columns must not change between runs, platforms or versions
    kmers = ("A", "MK", "GGG", "WXYZU")
    assert [kmer_feature_index(s) for s in kmers] == [29882, 24470, 58400, 46288]
    for s in kmers + ("MKVLAAG",):
        for f in (7, 1000, 2**16, 2**31 - 1):
            key = (len(s) << 56) | int.from_bytes(s.encode(), "big")
            assert kmer_feature_index(s, f) == _splitmix64_ref(key) % f
    with pytest.raises(ValueError):
        kmer_feature_index("ABCDEFGH")


def test_go_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="metastudent-data"):
        prepare("go-mf", tmp_path / "nope", out)
    d = write_go(tmp_path / "msd")
    (d / "MFO" / "goasp.fasta.psq").unlink()
    with pytest.raises(FileNotFoundError, match=r"goasp\.fasta\.psq.*apt-get install metastudent-data"):
        prepare("go-mf", tmp_path / "msd", out)

    d = write_go(tmp_path / "msd2")
    annot = d / "MFO" / "goasp_annot.dat"
    lines = annot.read_text().splitlines()
    lines[3] = lines[3].replace("GO:0000166", "GO:166")
    annot.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as e:
        prepare("go-mf", tmp_path / "msd2", out)
    assert e.value.lineno == 4 and e.value.path.endswith("goasp_annot.dat")

    d = write_go(tmp_path / "msd3")
    graph = d / "goGraph.txt"
    lines = graph.read_text().splitlines()
    lines[2] = lines[2].replace("\t", " ", 1)
    graph.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as e:
        prepare("go-bp", tmp_path / "msd3", out)
    assert e.value.lineno == 3 and e.value.path.endswith("goGraph.txt")

    # a protein without a sequence
    d = write_go(tmp_path / "msd4")
    with open(d / "MFO" / "goasp_annot.dat", "a") as f:
        f.write("Z99999\tGO:0005524\n")
    with pytest.raises(DataFormatError, match="Z99999") as e:
        prepare("go-mf", tmp_path / "msd4", out)
    assert e.value.lineno == len(MF_PROTEINS) + 1

    # a truncated sequence file
    d = write_go(tmp_path / "msd5")
    psq = d / "MFO" / "goasp.fasta.psq"
    psq.write_bytes(psq.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"goasp\.fasta\.psq"):
        prepare("go-mf", tmp_path / "msd5", out)
    assert not out.exists() or not any(p.name.endswith(".tmp") for p in out.iterdir())


# ----------------------------------------------------------------------------------
# all or nothing: a failed run leaves the folder as it was, runs never mix


def snapshot(out):
    """Every entry of ``out`` (temporary files included) with its bytes."""
    return {p: (out / p).read_bytes() for p in sorted(os.listdir(out))}


@pytest.mark.parametrize("name, readonly", [("wordnet", "labels.txt"), ("wordnet", "meta.json"),
                                            ("go-mf", "test.jsonl"), ("go-mf", "labels.txt")])
def test_prepare_read_only_output_changes_nothing(tmp_path, name, readonly):
    src = tmp_path / "src"
    write_wordnet(src) if name == "wordnet" else write_go(src)
    out = tmp_path / "out"
    prepare(name, src, out, seed=0, test_fraction=0.25, num_features=64)
    before = snapshot(out)
    (out / readonly).chmod(0o444)
    try:
        with pytest.raises(PermissionError, match=f"cannot write {re.escape(str(out / readonly))}: the file is read-only"):
            prepare(name, src, out, seed=3, test_fraction=0.5, num_features=32)
        assert snapshot(out) == before  # no file of the second run, no temporary file
    finally:
        (out / readonly).chmod(0o644)
    # once writable, the second run replaces every file
    prepare(name, src, out, seed=3, test_fraction=0.5, num_features=32)
    after = snapshot(out)
    assert sorted(after) == sorted(before)
    assert all(after[p] != before[p] for p in ("train.txt", "test.txt", "train.jsonl", "test.jsonl", "meta.json"))


@pytest.mark.parametrize("name, fail_in, call", [("wordnet", "_jsonl_line", 3), ("wordnet", "_write_lines", 2),
                                                 ("wordnet", "_write_json", 1), ("go-mf", "_jsonl_line", 3),
                                                 ("go-mf", "_write_lines", 1), ("go-mf", "_write_json", 1)])
def test_prepare_failing_partway_changes_nothing(tmp_path, monkeypatch, name, fail_in, call):
    from largeout.data import prepare as prepare_mod

    src = tmp_path / "src"
    write_wordnet(src) if name == "wordnet" else write_go(src)
    out = tmp_path / "out"
    prepare(name, src, out, seed=0, test_fraction=0.25)
    before = snapshot(out)
    real = getattr(prepare_mod, fail_in)
    calls = []

    def fail_late(*a, **kw):  # fails after some output files are complete
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError("disk on fire")
        return real(*a, **kw)

    monkeypatch.setattr(prepare_mod, fail_in, fail_late)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(name, src, out, seed=3, test_fraction=0.5)
    assert len(calls) == call
    assert snapshot(out) == before
    # a new folder that fails is not left behind, empty
    with pytest.raises(RuntimeError, match="disk on fire"):
        calls.clear()
        prepare(name, src, tmp_path / "new" / "out", seed=3)
    assert not (tmp_path / "new" / "out").exists()


def test_prepare_another_dataset_replaces_the_earlier_runs_files(tmp_path):
    write_wordnet(tmp_path / "wn")
    write_go(tmp_path / "msd")
    out = tmp_path / "out"
    prepare("wordnet", tmp_path / "wn", out)
    wn = snapshot(out)
    assert "vocab.txt" in wn
    (out / "notes.txt").write_text("mine")  # not written by prepare: kept
    prepare("go-mf", tmp_path / "msd", out, num_features=64)
    go = snapshot(out)
    assert sorted(go) == ["labels.txt", "meta.json", "notes.txt", "test.jsonl", "test.txt", "train.jsonl",
                          "train.txt"]  # wordnet's vocab.txt went with the rest of that run
    assert json.loads(go["meta.json"])["name"] == "go-mf"
    (tmp_path / "fresh").mkdir()
    prepare("go-mf", tmp_path / "msd", tmp_path / "fresh", num_features=64)
    fresh = snapshot(tmp_path / "fresh")
    assert {p: v for p, v in go.items() if p not in ("meta.json", "notes.txt")} == \
           {p: v for p, v in fresh.items() if p != "meta.json"}
    # and back: a read-only file stops the run before anything changes
    (out / "train.jsonl").chmod(0o444)
    with pytest.raises(PermissionError, match="train.jsonl"):
        prepare("wordnet", tmp_path / "wn", out)
    (out / "train.jsonl").chmod(0o644)
    assert snapshot(out) == go
    prepare("wordnet", tmp_path / "wn", out)
    again = snapshot(out)
    assert sorted(again) == sorted(list(wn) + ["notes.txt"])
    assert {p: v for p, v in again.items() if p not in ("meta.json", "notes.txt")} == \
           {p: v for p, v in wn.items() if p != "meta.json"}


def test_prepare_read_only_folder_changes_nothing(tmp_path, monkeypatch):
    write_wordnet(tmp_path / "wn")
    out = tmp_path / "out"
    prepare("wordnet", tmp_path / "wn", out)
    before = snapshot(out)
    out.chmod(0o555)
    if os.geteuid() == 0:  # (root may write anyway: make os.access answer as for a user)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(out) and mode & os.W_OK
                            else real_access(p, mode, **kw))
    try:
        with pytest.raises(PermissionError, match=f"cannot write {re.escape(str(out))}/train.txt: its folder .* "
                                                  "is not writable"):
            prepare("wordnet", tmp_path / "wn", out, seed=4)
    finally:
        out.chmod(0o755)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------
# the real packages (skipped where they are not installed)


@pytest.mark.skipif(not os.path.isfile("/usr/share/wordnet/data.noun"), reason="wordnet-base is not installed")
def test_real_wordnet_slice(tmp_path):
    meta = prepare("wordnet", None, tmp_path / "out", max_examples=2000)
    assert meta["source"] == "/usr/share/wordnet" and meta["synsets_total"] > 80000
    assert meta["N_train"] == 1600 and meta["N_test"] == 400
    assert 1000 < meta["L"] < 5000 and 500 < meta["D"] < 10000
    assert 3 < meta["labels_per_train_example"] < 15
    labels = (tmp_path / "out" / "labels.txt").read_text().splitlines()
    assert labels[0] == "entity.n.01" and len(labels) == meta["L"]
    X, Y = read_xc(tmp_path / "out" / "test.txt")
    assert X.shape == (400, meta["D"]) and Y.shape == (400, meta["L"])


@pytest.mark.skipif(not os.path.isdir("/usr/share/metastudent-data"), reason="metastudent-data is not installed")
def test_real_go_mf_slice(tmp_path):
    meta = prepare("go-mf", None, tmp_path / "out", max_examples=2000)
    assert meta["proteins_total"] > 400000 and meta["N_train"] + meta["N_test"] == 2000
    assert abs(meta["N_test"] - 400) < 20 and 500 < meta["L"] < 6500
    ex = read_out(tmp_path / "out")
    assert all(set(t) <= set(NCBISTDAA) for _, t, _ in ex.values())
    assert all("GO:0003674" in labs for p, _, labs in ex.values() if p == "train")


def test_prepare_keeps_files_a_foreign_meta_json_lists(tmp_path):
    # a meta.json that no prepare run wrote names nothing prepare may remove
    write_wordnet(tmp_path / "wn")
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"name": "my-notes", "files": ["notes.md", "raw_labels.csv"]}))
    (out / "notes.md").write_text("mine")
    (out / "raw_labels.csv").write_text("a,b\n")
    prepare("wordnet", tmp_path / "wn", out)
    assert (out / "notes.md").read_text() == "mine" and (out / "raw_labels.csv").read_text() == "a,b\n"
    # nor does a prepare meta.json that lists files prepare never writes
    (out / "meta.json").write_text(json.dumps({"name": "wordnet", "files": ["notes.md", "train.txt"]}))
    prepare("wordnet", tmp_path / "wn", out, seed=1)
    assert (out / "notes.md").read_text() == "mine"


@pytest.mark.parametrize("fail_at", [1, 3, 7])
def test_prepare_failing_while_putting_files_in_place_changes_nothing(tmp_path, monkeypatch, fail_at):
    from largeout.data import prepare as prepare_mod

    write_wordnet(tmp_path / "wn")
    write_go(tmp_path / "msd")
    out = tmp_path / "out"
    prepare("wordnet", tmp_path / "wn", out, seed=0, test_fraction=0.25)
    before = snapshot(out)
    real = os.replace
    calls = []

    def flaky(a, b):  # the fail_at-th rename of the commit fails
        calls.append((a, b))
        if len(calls) == fail_at:
            raise OSError(5, "Input/output error")
        return real(a, b)

    class FlakyOs:
        def __getattr__(self, name):
            return flaky if name == "replace" else getattr(os, name)

    real_commit = prepare_mod._Staging.commit

    def commit(self):
        monkeypatch.setattr(prepare_mod, "os", FlakyOs())
        try:
            return real_commit(self)
        finally:
            monkeypatch.setattr(prepare_mod, "os", os)

    monkeypatch.setattr(prepare_mod._Staging, "commit", commit)
    for name, src in (("wordnet", tmp_path / "wn"), ("go-mf", tmp_path / "msd")):
        calls.clear()
        with pytest.raises(OSError, match="Input/output error"):
            prepare(name, src, out, seed=3, test_fraction=0.5, **({} if name == "wordnet" else {"num_features": 64}))
        assert snapshot(out) == before
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no backup or temporary left
