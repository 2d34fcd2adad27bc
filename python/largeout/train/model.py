"""Models for the trainer: an encoder and a large output layer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..nn import GroupSparseLinear, Linear
from .config import TrainConfig
from .data import Batch, hash_file

__all__ = ["TfidfEncoder", "HFEncoder", "XMCModel", "build_model", "text_embeddings", "model_fingerprint",
           "encoder_fingerprint"]


class TfidfEncoder(nn.Module):
    """Sparse tf-idf features -> hidden vector: a weighted EmbeddingBag (a linear
    layer over the sparse input), then GELU, dropout and a second linear layer; with
    ``residual``, the embedding is added to the MLP's output (a linear path from the
    words to the labels, which helps rare labels)."""

    def __init__(self, num_features: int, hidden: int, dropout: float, residual: bool = False) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(num_features, hidden, mode="sum")
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.mlp = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout))
        self.residual = residual
        nn.init.normal_(self.embed.weight, std=hidden**-0.5)
        self.out_dim = hidden

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.embed(batch.feat_idx, batch.feat_off, per_sample_weights=batch.feat_val) + self.bias
        return h + self.mlp(h) if self.residual else self.mlp(h)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx")
_fingerprints: dict = {}


def model_fingerprint(path: str, weights: bool = True) -> str:
    """SHA-256 over the files of a model directory that transformers reads: those at its top
    level, but for hidden ones and READMEs (names, sizes and contents; with ``weights``
    False, the weight files left out, for a checkpoint that holds the weights itself).
    Remembered per process while the files' sizes, times and inodes stay the same."""
    root = Path(path).resolve()
    files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")
                   and not f.name.endswith(".md") and (weights or not f.name.endswith(_WEIGHT_SUFFIXES)))
    stats = tuple((f.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for f in files for st in [f.stat()])
    key = (str(root), weights, stats)
    if key not in _fingerprints:
        h = hashlib.sha256()
        for (name, size, *_), f in zip(stats, files):
            h.update(f"{name}\0{size}\0".encode())
            try:
                hash_file(h, f)
            except OSError as e:
                raise ValueError(f"encoder: cannot read {f} of the model directory ({e})") from None
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


def encoder_fingerprint(encoder: str, hf_path: str) -> Optional[str]:
    """What a checkpoint of an encoder depends on outside itself: for "tfidf+hf:PATH" the
    whole model directory (its frozen embeddings are the features), for "hf:PATH" all but the
    weights (the tokenizer and config; the checkpoint holds the weights); None for tfidf."""
    if not hf_path:
        return None
    return model_fingerprint(hf_path, weights=not encoder.startswith("hf:"))


class HFEncoder(nn.Module):
    """A transformers encoder loaded from a local directory (its weights in float32), mean-pooled.

    Checked at construction, so that a run fails before it writes anything: the directory
    has tokenizer files whose vocabulary fits the model's embedding, the weights cover the
    whole model (no part left at random initialisation; a pooler is not used), ``max_length``
    leaves room for text and is within the model's positions, and the model runs on a batch
    of two texts, one of ``max_length`` tokens (at most 1,024)."""

    def __init__(self, path: str, max_length: int, dropout: float) -> None:
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ImportError("encoder = \"hf:PATH\" needs the transformers package: pip install transformers") from None
        where = f"encoder: the model directory {path}"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # (transformers raises many kinds)
            raise ValueError(f"{where}: no tokenizer could be loaded from it ({type(e).__name__}: {e})") from e
        try:
            model, info = AutoModel.from_pretrained(path, local_files_only=True, output_loading_info=True)
        except Exception as e:
            raise ValueError(f"{where}: no transformers model could be loaded from it ({type(e).__name__}: {e})") from e
        bad = {}
        for kind in ("missing_keys", "mismatched_keys", "error_msgs"):
            keys = [k if isinstance(k, str) else str(k[0]) for k in (info.get(kind) or [])]
            keys = [k for k in keys if not k.startswith("pooler.")]
            if keys:
                bad[kind] = keys[:5] + (["..."] if len(keys) > 5 else [])
        if bad:
            raise ValueError(f"{where}: its weights do not cover the model its config.json describes ({bad}); "
                             "those parts would start from random values")
        vocab = getattr(model.config, "vocab_size", None)
        if vocab and not vocab // 2 <= len(self.tokenizer) <= vocab:  # (no tokenizer files: transformers 5
            # makes an empty tokenizer, every text then unknown tokens)
            raise ValueError(f"{where}: its tokenizer knows {len(self.tokenizer)} tokens and the model's embedding "
                             f"has {vocab} rows; expected the tokenizer files of this model there")
        least = self.tokenizer.num_special_tokens_to_add() + 1
        if max_length < least:
            raise ValueError(f"max_length: expected at least {least} for {path} (its {least - 1} special tokens and "
                             f"one of the text); got {max_length}")
        # float32 whatever precision the directory stores (a half-precision copy is smaller to
        # ship): the trainer's optimizers keep the encoder's weights and state in float32
        self.model = model.float()
        self.max_length = max_length
        self.dropout = nn.Dropout(dropout)
        self.out_dim = self.model.config.hidden_size
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and max_length > limit:
            raise ValueError(f"max_length: expected at most {limit} for {path} (its max_position_embeddings); "
                             f"got {max_length}")
        trial = min(max_length, 1024)  # (a test batch at a long context's full length would be slow on a CPU)
        try:
            with torch.no_grad():
                self._pool(["a", " ".join(["a"] * (2 * trial))])  # (no dropout: no random numbers drawn)
        except Exception as e:
            raise ValueError(f"{where}: the model does not run on texts tokenized to {trial} tokens (max_length "
                             f"{max_length}; {type(e).__name__}: {e})") from e

    def _pool(self, texts) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(device)
        out = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.dropout(self._pool(batch.texts))


def _embedding_cache_path(texts, path: str, max_length: int) -> Path:
    """Where text_embeddings caches its result: $LARGEOUT_CACHE (default
    ~/.cache/largeout)/embeddings/<key>.npy, the key a SHA-256 of the model directory's
    contents (:func:`model_fingerprint`), max_length and the texts."""
    h = hashlib.sha256(b"largeout text_embeddings v2;")
    h.update(f"model={model_fingerprint(path)};max_length={max_length};n={len(texts)};".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    root = Path(os.environ.get("LARGEOUT_CACHE") or Path.home() / ".cache" / "largeout")
    return root / "embeddings" / f"{h.hexdigest()[:32]}.npy"


def _load_cached(target: Path, n: int) -> np.ndarray:
    """A cached embedding array, checked: [n, d] float32, finite, rows of unit norm."""
    fix = "; delete it (it is made again)"
    try:
        E = np.load(target)
    except (OSError, ValueError) as e:
        raise ValueError(f"embedding cache {target}: unreadable ({e}){fix}") from None
    if E.ndim != 2 or E.shape[0] != n or E.dtype != np.float32:
        raise ValueError(f"embedding cache {target}: expected a float32 array of {n} rows; got {E.dtype} {E.shape}{fix}")
    if not np.isfinite(E).all() or not np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-3):
        raise ValueError(f"embedding cache {target}: expected finite rows of unit norm{fix}")
    return E


def text_embeddings(texts, path: str, max_length: int, device: torch.device, batch_size: int = 256,
                    cache: bool = True) -> np.ndarray:
    """``[len(texts), hidden]`` float32: each text's mean-pooled last hidden state from the
    transformers model in the local directory ``path`` (eval mode, no gradients),
    L2-normalised: the frozen sentence embedding of sentence-transformers models such as
    all-MiniLM-L6-v2. Texts go through the model sorted by length (less padding). Cached
    on disk (see _embedding_cache_path; a cached array is checked before use) unless
    ``cache`` is false."""
    target = _embedding_cache_path(texts, path, max_length) if cache else None
    if target is not None and target.exists():
        return _load_cached(target, len(texts))
    encoder = HFEncoder(path, max_length, 0.0).to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), encoder.out_dim), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            e = encoder(Batch(targets=torch.empty(len(idx), 0), texts=[texts[j] for j in idx]))
            out[idx] = nn.functional.normalize(e.float(), dim=1).cpu().numpy()
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"LARGEOUT_CACHE: cannot make the cache folder {target.parent} ({e})") from None
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, target)  # atomic: a concurrent run sees the whole file or none
    return out


class XMCModel(nn.Module):
    """encoder -> output layer. With ``rank_labels`` set, the model carries a buffer
    ``rank_log_weight`` [L] (saved in checkpoints) that prediction adds to the log
    probabilities before taking the top k (see ``TrainConfig.rank_propensity_power``)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, rank_labels: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_buffer("rank_log_weight", torch.zeros(rank_labels) if rank_labels else None)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.encoder(batch))

    def ranking_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What prediction ranks labels by: the logits, or log sigmoid(logits) +
        rank_log_weight when the model has rank weights."""
        if self.rank_log_weight is None:
            return logits
        return nn.functional.logsigmoid(logits) + self.rank_log_weight


def build_model(cfg: TrainConfig, num_features: int, num_labels: int) -> XMCModel:
    if cfg.reads_features:  # tfidf, or tfidf+hf (the embeddings are features)
        if num_features < 1:
            raise ValueError(f"encoder = \"{cfg.encoder}\" needs sparse features (train.txt in the XC format)")
        encoder = TfidfEncoder(num_features, cfg.hidden, cfg.dropout, cfg.residual)
    else:
        encoder = HFEncoder(cfg.hf_path, cfg.max_length, cfg.dropout)
    dim = encoder.out_dim
    wdt = getattr(torch, cfg.head_dtype)
    scale = "label" if cfg.head_weight_scale == "label" else None
    if cfg.output == "dense":
        # (largeout's Linear for float32 too: the same initial values as nn.Linear's from the same
        # RNG, and on CUDA aligned GEMMs at any label count)
        head = Linear(dim, num_labels, weight_dtype=wdt, weight_scale=scale)
    else:
        if cfg.fan_in > dim:
            raise ValueError(f"config: fan_in = {cfg.fan_in} cannot exceed the encoder's output size {dim}")
        head = GroupSparseLinear(dim, num_labels, cfg.fan_in, cfg.group_size, weight_dtype=wdt, weight_scale=scale)
    return XMCModel(encoder, head, num_labels if cfg.rank_propensity_power != 0 else 0)
