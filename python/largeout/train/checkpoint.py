"""Checkpoints: model and optimizer tensors as safetensors, the rest as JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint"]


def _jsonable(v):
    return {"__dtype__": str(v).replace("torch.", "")} if isinstance(v, torch.dtype) else v


def _from_json(v):
    return getattr(torch, v["__dtype__"]) if isinstance(v, dict) and "__dtype__" in v else v


def _flatten_optimizer(state: Dict[str, Any], prefix: str = "") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors (safetensors) and the rest (JSON) of an optimizer's state_dict; several
    optimizers ({"optimizers": [...]}, the trainer's low-precision head) each under a prefix."""
    if "optimizers" in state:
        tensors, metas = {}, []
        for i, sub in enumerate(state["optimizers"]):
            t, m = _flatten_optimizer(sub, f"{prefix}opt{i}.")
            tensors.update(t)
            metas.append(m)
        return tensors, {"optimizers": metas}
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            key = f"{prefix}state.{pid}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key[len(prefix):]] = value
    extra = [k for k, v in state.items() if k not in ("state", "param_groups") and torch.is_tensor(v)]
    for k in extra:  # e.g. largeout.optim's RNG state
        tensors[f"{prefix}extra.{k}"] = state[k].detach().contiguous().cpu()
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "extra": extra, "prefix": prefix}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    if "optimizers" in meta:
        return {"optimizers": [_unflatten_optimizer(tensors, m) for m in meta["optimizers"]]}
    prefix = meta.get("prefix", "")
    state: Dict[int, Dict[str, Any]] = {}
    mine = [(k[len(prefix):], v) for k, v in tensors.items() if k.startswith(prefix + "state.")]
    for key, value in mine + list(meta["scalars"].items()):
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    out = {"state": state, "param_groups": [{k: _from_json(v) for k, v in g.items()} for g in meta["param_groups"]]}
    for k in meta.get("extra", []):
        out[k] = tensors[f"{prefix}extra.{k}"]
    return out


def save_checkpoint(directory: Path, model, optimizer, trainer_state: Dict[str, Any], config: Dict[str, Any]) -> None:
    """Write a checkpoint directory atomically (a temp dir, then a rename)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(model_tensors, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    opt_tensors["rng.torch"] = torch.get_rng_state()
    first = next(iter(model.parameters()), None)
    if first is not None and first.device.type == "cuda":  # (dropout on the GPU draws from the device's generator)
        opt_tensors["rng.cuda"] = torch.cuda.get_rng_state(first.device)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "optimizer": opt_meta}, indent=1) + "\n")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, model, optimizer=None, device="cpu") -> Dict[str, Any]:
    """Load model (and optimizer, RNG) state; returns the trainer state dict."""
    directory = Path(directory)
    if not (directory / "model.safetensors").exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (model.safetensors missing)")

    def read(name: str, **kwargs):
        try:
            return load_file(str(directory / name), **kwargs)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {directory}: {name} missing") from None
        except Exception as e:  # noqa: BLE001 (safetensors raises its own error type)
            raise ValueError(f"checkpoint {directory}: {name} is not a readable safetensors file ({e})") from None

    weights = read("model.safetensors", device=str(device))
    try:
        meta = json.loads((directory / "trainer.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {directory}: trainer.json is missing or not valid JSON ({e})") from None
    tensors = read("optimizer.safetensors") if optimizer is not None else None
    model.load_state_dict(weights)
    if optimizer is not None:
        torch.set_rng_state(tensors.pop("rng.torch"))
        cuda_rng = tensors.pop("rng.cuda", None)
        if cuda_rng is not None and torch.device(device).type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, torch.device(device))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    return meta
