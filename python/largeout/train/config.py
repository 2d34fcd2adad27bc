"""Trainer configuration: a dataclass, loaded from TOML and overridden by flags."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["TrainConfig", "load_config"]

# The type of the Optional fields' values (their defaults are None).
_OPTIONAL_TYPES = {"encoder_lr": 0.0, "model_seed": 0}


def _synthetic_params() -> Dict[str, inspect.Parameter]:
    """The parameters of largeout.data.synthetic: the keys of the ``synthetic`` table."""
    from ..data import synthetic

    return dict(inspect.signature(synthetic).parameters)


@dataclass
class TrainConfig:
    """Everything a training run needs. TOML keys are the field names; the
    ``[synthetic]`` table sets the built-in data generator's arguments."""

    # -- data ----------------------------------------------------------------------
    #: "synthetic" (built-in generator) or a directory written by ``largeout data prepare``
    #: (train.txt / test.txt in the XC format, train.jsonl / test.jsonl for text encoders).
    data: str = "synthetic"
    synthetic: Dict[str, Any] = field(
        default_factory=lambda: {"num_samples": 24000, "num_features": 8000, "num_labels": 3000, "seed": 0}
    )
    #: fraction of the training data held out for validation (model selection, calibration)
    val_fraction: float = 0.1
    #: fraction of the synthetic data used as the test split
    test_fraction: float = 0.2

    # -- model -----------------------------------------------------------------------
    #: "tfidf" (sparse features -> EmbeddingBag MLP), "hf:PATH" (a local transformers model,
    #: fine-tuned), or "tfidf+hf:PATH" (the tfidf encoder over the sparse features with each
    #: example's frozen, mean-pooled, L2-normalised sentence embedding from the model at PATH
    #: appended as dense features; computed once per dataset and cached, see
    #: largeout.train.model.text_embeddings)
    encoder: str = "tfidf"
    hidden: int = 512
    dropout: float = 0.3
    #: tfidf encoder: add the embedding to the MLP's output (a linear path to the head)
    residual: bool = False
    #: "dense" (largeout.nn.Linear) or "group-sparse" (largeout.nn.GroupSparseLinear)
    output: str = "group-sparse"
    # Output layer weights: float32 | bfloat16 | float16 | float8_e4m3fn | float8_e5m2. Below
    # float32 the head is trained by largeout.optim (same algorithm as `optimizer`) with
    # head_rounding: stochastic | nearest | kahan (nearest rounding plus compensation).
    head_dtype: str = "float32"
    head_rounding: str = "stochastic"
    #: fp8 heads: "label" gives each label a power-of-two weight scale (largeout.nn.lowp),
    #: re-chosen at the end of every epoch (rescale_weight_); "none": unscaled fp8 codes
    head_weight_scale: str = "none"
    fan_in: int = 128
    group_size: int = 32
    #: output bias at start: "prior" (log-odds of each label's training frequency, so the
    #: first steps need not learn the label prior) or "zero"
    bias_init: str = "prior"
    #: tokens per text for hf encoders
    max_length: int = 128

    # -- optimization ------------------------------------------------------------------
    batch_size: int = 256
    epochs: int = 8
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 5e-3
    encoder_lr: Optional[float] = None  # default: lr
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 50
    grad_clip: float = 0.0  # 0: off
    #: propensity-weighted BCE: positives of label l weigh inv_propensity[l] ** this
    #: (0: plain BCE). Rare labels count more, which raises PSP@k; 0.25-0.5 are usual.
    pos_weight_power: float = 0.0  # positives of label l weigh inv_propensity[l] ** this in the loss
    # Labels are ranked by sigmoid(logit) * inv_propensity ** this at prediction: 0 ranks by
    # probability (best for P@k), 1 by expected propensity-scored gain (best for PSP@k,
    # Wydmuch et al. 2021); small values mostly reorder labels of near-equal probability:
    # positive ones put the rarer first, negative ones (down to -1) the more frequent first
    # (a hedge for P@1 where several labels are near-certain and the rarer ones are wrong
    # more often).
    rank_propensity_power: float = 0.0
    seed: int = 0  # data splits; also the model's initialisation and shuffling unless model_seed is set
    model_seed: Optional[int] = None  # initialisation, shuffling and rounding only (members of an ensemble)

    # -- evaluation and outputs ----------------------------------------------------------------
    eval_every: int = 1  # epochs
    select_metric: str = "P@1"  # validation metric that picks the best checkpoint
    topk: int = 5
    propensity_a: float = 0.55
    propensity_b: float = 1.5
    out: str = "runs/latest"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True

    @property
    def reads_text(self) -> bool:
        """Whether the encoder reads the examples' texts (train.jsonl / test.jsonl)."""
        return self.encoder.startswith(("hf:", "tfidf+hf:"))

    @property
    def reads_features(self) -> bool:
        """Whether the encoder reads sparse features (train.txt / test.txt, XC format)."""
        return not self.encoder.startswith("hf:")

    @property
    def hf_path(self) -> str:
        """The transformers model directory of an "hf:" or "tfidf+hf:" encoder ("" otherwise)."""
        for prefix in ("hf:", "tfidf+hf:"):
            if self.encoder.startswith(prefix):
                return self.encoder[len(prefix):]
        return ""

    def _check_types(self) -> None:
        """Each field's value of the type of its default (a TOML file's values and
        dataclasses.replace are not converted): bools for flags, integers for counts, real
        numbers for rates, strings, the synthetic table's keys those of largeout.data.synthetic."""
        defaults = TrainConfig()
        for f in dataclasses.fields(self):
            v, d = getattr(self, f.name), getattr(defaults, f.name)
            if f.name in _OPTIONAL_TYPES:
                if v is None:
                    continue
                d = _OPTIONAL_TYPES[f.name]
            if isinstance(d, bool):
                ok = isinstance(v, bool)
                want = "true or false"
            elif isinstance(d, int):
                ok = isinstance(v, int) and not isinstance(v, bool)
                want = "an integer"
            elif isinstance(d, float):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                want = "a number"
            elif isinstance(d, str):
                ok = isinstance(v, str)
                want = "a string"
            else:
                ok = isinstance(v, dict)
                want = "a table"
            if not ok:
                raise ValueError(f"config: {f.name} must be {want}; got {type(v).__name__} {v!r}")
            if isinstance(d, float):
                setattr(self, f.name, float(v))
        params = _synthetic_params()
        unknown = sorted(set(self.synthetic) - set(params))
        if unknown:
            raise ValueError(f"config: synthetic has unknown keys {unknown}; known keys are {sorted(params)}")

    def validate(self) -> "TrainConfig":
        def bad(name, expected):
            raise ValueError(f"config: {name} must be {expected}; got {getattr(self, name)!r}")

        self._check_types()

        if self.output not in ("dense", "group-sparse"):
            bad("output", '"dense" or "group-sparse"')
        if not (self.encoder == "tfidf" or (self.encoder.startswith(("hf:", "tfidf+hf:")) and self.hf_path)):
            bad("encoder", '"tfidf", "hf:PATH" or "tfidf+hf:PATH"')
        if self.bias_init not in ("prior", "zero"):
            bad("bias_init", '"prior" or "zero"')
        if self.optimizer not in ("adamw", "sgd"):
            bad("optimizer", '"adamw" or "sgd"')
        if self.head_dtype not in ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"):
            bad("head_dtype", '"float32", "bfloat16", "float16", "float8_e4m3fn" or "float8_e5m2"')
        if self.head_rounding not in ("stochastic", "nearest", "kahan"):
            bad("head_rounding", '"stochastic", "nearest" or "kahan"')
        if self.head_weight_scale not in ("none", "label"):
            bad("head_weight_scale", '"none" or "label"')
        if self.head_weight_scale == "label" and not self.head_dtype.startswith("float8"):
            raise ValueError(f'config: head_weight_scale "label" needs an fp8 head_dtype (float8_e4m3fn or '
                             f'float8_e5m2); got head_dtype {self.head_dtype!r}')
        if self.schedule not in ("constant", "cosine", "linear"):
            bad("schedule", '"constant", "cosine" or "linear"')
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            bad("device", '"auto", "cpu", "cuda" or "cuda:N"')
        for name in ("batch_size", "epochs", "hidden", "eval_every", "max_length"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.topk < 5:
            bad("topk", "an integer >= 5 (P@k, nDCG@k and PSP@k are reported for k = 1, 3, 5)")
        for name in ("seed", "model_seed"):  # (the shuffling seeds seed * 1000 + epoch must stay below 2**64)
            v = getattr(self, name)
            if v is not None and not 0 <= v < 2**53:
                bad(name, "an integer in [0, 2**53)" + (", or unset" if name == "model_seed" else ""))
        if self.warmup_steps < 0:
            bad("warmup_steps", "an integer >= 0")
        for name in ("weight_decay", "grad_clip", "momentum"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "a finite number >= 0")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "in [0, 1)")
        for name in ("propensity_a", "propensity_b"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                bad(name, "a finite number > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        if not 0.0 < self.test_fraction < 1.0:
            bad("test_fraction", "in (0, 1)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0")
        if self.encoder_lr is not None and not (math.isfinite(self.encoder_lr) and self.encoder_lr > 0):
            bad("encoder_lr", "a finite number > 0, or unset (the encoder then takes lr)")
        if not 0.0 <= self.pos_weight_power <= 2.0:
            bad("pos_weight_power", "in [0, 2]")
        if not -1.0 <= self.rank_propensity_power <= 1.0:
            bad("rank_propensity_power", "in [-1, 1]")
        name, _, k = self.select_metric.partition("@")
        if name not in ("P", "nDCG", "PSP", "PSnDCG", "R") or k not in ("1", "3", "5"):
            bad("select_metric", "a metric P, nDCG, PSP, PSnDCG or R at k = 1, 3 or 5, such as P@1 or PSP@3")
        if self.hf_path and not os.path.isdir(self.hf_path):
            raise ValueError(f"config: encoder {self.encoder!r}: {self.hf_path} is not a directory (a local "
                             "transformers model)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Parse a flag's string value into the type of the field's default."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config: {name} must be true or false; got {value!r}")
    if default is None or isinstance(default, (int, float)):
        try:
            return int(value) if isinstance(default, int) else float(value)
        except ValueError:
            what = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"config: {name} must be {what}; got {value!r}") from None
    if isinstance(default, dict):
        try:
            table = json.loads(value)
        except ValueError as e:
            raise ValueError(f"config: {name} must be a JSON object ({e}); got {value!r}") from None
        if not isinstance(table, dict):
            raise ValueError(f"config: {name} must be a JSON object; got {value!r}")
        return {**default, **table}  # (the keys it does not set keep their defaults, as in a TOML table)
    return value


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """TrainConfig from an optional TOML file, then ``overrides`` (flag values;
    ``"synthetic.num_labels"`` style keys set one entry of a table)."""
    values: Dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {path}: {e}") from None
    defaults = TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config file {path}: unknown keys {unknown}; known keys are {sorted(known)}")
    for key, value in values.items():  # a table in the file sets its keys; the others keep their defaults
        if isinstance(value, dict) and isinstance(getattr(defaults, key), dict):
            values[key] = {**getattr(defaults, key), **value}
    cfg = dataclasses.replace(defaults, **values)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:
            table, sub = key.split(".", 1)
            if table not in known or not isinstance(getattr(cfg, table), dict):
                raise ValueError(f"config: unknown table {table!r} in {key!r}")
            current = dict(getattr(cfg, table))
            old = current.get(sub)
            if old is None and table == "synthetic":  # a key not set yet: the type of the generator's default
                param = _synthetic_params().get(sub)
                old = param.default if param is not None and param.default is not inspect.Parameter.empty else None
            current[sub] = _coerce(key, value, old if old is not None else 0) if isinstance(value, str) else value
            setattr(cfg, table, current)
            continue
        if key not in known:
            raise ValueError(f"config: unknown key {key!r}; known keys are {sorted(known)}")
        default = getattr(defaults, key)
        if default is None:  # the Optional fields: the type of their values
            default = _OPTIONAL_TYPES.get(key)
        if isinstance(default, dict):  # a whole table: onto the table so far (a config file's, or the default)
            default = getattr(cfg, key)
        setattr(cfg, key, _coerce(key, value, default))
    return cfg.validate()
