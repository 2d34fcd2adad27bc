"""Models for the trainer: an encoder and a large output layer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..nn import GroupSparseLinear, Linear
from .config import TrainConfig
from .data import Batch

__all__ = ["TfidfEncoder", "HFEncoder", "XMCModel", "build_model", "text_embeddings"]


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


class HFEncoder(nn.Module):
    """A transformers encoder loaded from a local directory (its weights in float32), mean-pooled."""

    def __init__(self, path: str, max_length: int, dropout: float) -> None:
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ImportError("encoder = \"hf:PATH\" needs the transformers package: pip install transformers") from None
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # float32 whatever precision the directory stores (a half-precision copy is smaller to
        # ship): the trainer's optimizers keep the encoder's weights and state in float32
        self.model = AutoModel.from_pretrained(path, local_files_only=True).float()
        self.max_length = max_length
        self.dropout = nn.Dropout(dropout)
        self.out_dim = self.model.config.hidden_size

    def forward(self, batch: Batch) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tok = self.tokenizer(
            batch.texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        out = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(out.dtype)
        return self.dropout((out * mask).sum(1) / mask.sum(1).clamp_min(1.0))


def _embedding_cache_path(texts, path: str, max_length: int) -> Path:
    """Where text_embeddings caches its result: $LARGEOUT_CACHE (default
    ~/.cache/largeout)/embeddings/<key>.npy, the key a SHA-256 of the model directory's
    files (names, sizes, modification times), max_length and the texts."""
    h = hashlib.sha256()
    model_dir = Path(path).resolve()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(f"max_length={max_length};n={len(texts)};".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    root = Path(os.environ.get("LARGEOUT_CACHE") or Path.home() / ".cache" / "largeout")
    return root / "embeddings" / f"{h.hexdigest()[:32]}.npy"


def text_embeddings(texts, path: str, max_length: int, device: torch.device, batch_size: int = 256,
                    cache: bool = True) -> np.ndarray:
    """``[len(texts), hidden]`` float32: each text's mean-pooled last hidden state from the
    transformers model in the local directory ``path`` (eval mode, no gradients),
    L2-normalised: the frozen sentence embedding of sentence-transformers models such as
    all-MiniLM-L6-v2. Texts go through the model sorted by length (less padding). Cached
    on disk (see _embedding_cache_path) unless ``cache`` is false."""
    target = _embedding_cache_path(texts, path, max_length) if cache else None
    if target is not None and target.exists():
        return np.load(target)
    encoder = HFEncoder(path, max_length, 0.0).to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), encoder.out_dim), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            e = encoder(Batch(targets=torch.empty(len(idx), 0), texts=[texts[j] for j in idx]))
            out[idx] = nn.functional.normalize(e.float(), dim=1).cpu().numpy()
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
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
        head = (nn.Linear(dim, num_labels) if wdt == torch.float32
                else Linear(dim, num_labels, weight_dtype=wdt, weight_scale=scale))
    else:
        if cfg.fan_in > dim:
            raise ValueError(f"config: fan_in = {cfg.fan_in} cannot exceed the encoder's output size {dim}")
        head = GroupSparseLinear(dim, num_labels, cfg.fan_in, cfg.group_size, weight_dtype=wdt, weight_scale=scale)
    return XMCModel(encoder, head, num_labels if cfg.rank_propensity_power != 0 else 0)
