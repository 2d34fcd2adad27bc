"""PNG plots of a training run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .. import metrics as M


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: List[Dict[str, Any]], path: Path) -> str:
    """Validation P@k (and PSP@k) per epoch."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    epochs = [h["epoch"] for h in history if "val" in h]
    for key, style in (("P@1", "-o"), ("P@3", "-s"), ("P@5", "-^"), ("PSP@5", "--")):
        ax.plot(epochs, [h["val"][key] for h in history if "val" in h], style, label=key, markersize=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_reliability(topk, scores, Y, calibrator: Optional[M.IsotonicCalibrator], k: int, path: Path) -> str:
    """Reliability diagram of the top-k predictions on test, before and after
    isotonic recalibration fitted on validation."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
    ax.plot([0, 1], [0, 1], color="gray", lw=1, label="perfect")
    curves = [("raw", scores)]
    if calibrator is not None:
        curves.append(("isotonic", np.clip(calibrator.transform(scores), 0, 1)))
    for name, s in curves:
        d = M.reliability_diagram(topk, s, Y, k)
        ok = d["count"] > 0
        ece = M.ece_at_k(topk, s, Y, k)
        ax.plot(d["mean_confidence"][ok], d["accuracy"][ok], "-o", markersize=3, label=f"{name} (ECE@{k} {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("precision")
    ax.set_title(f"calibration@{k} on test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
