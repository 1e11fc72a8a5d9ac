"""Checkpoints: one safetensors file holding weights, optimizer state and JSON metadata.

One file, written to a temporary name and renamed into place, so a crash mid-write never leaves a
torn checkpoint. Nothing is unpickled on load: tensors come from safetensors, the rest from JSON.
Keys: ``model.<param>`` for the model's state_dict, ``optim.<param index>.<name>`` for tensor
optimizer state; metadata keys ``xnornet`` (run metadata) and ``optim`` (param groups, scalars).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .export import check_checkpoint_path, not_a_checkpoint
from .files import write_atomically
from .models import Trunk, TrunkConfig


def save_checkpoint(path, model: torch.nn.Module, meta: dict, optimizer=None) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items()}
    metadata = {"xnornet": json.dumps(meta)}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for pid, state in sd["state"].items():
            for name, val in state.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{pid}.{name}"] = val.detach().cpu().contiguous().clone()
                else:
                    scalars[f"{pid}.{name}"] = val
        metadata["optim"] = json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path) -> dict:
    """A checkpoint's run metadata alone, without loading its tensors (for checks up front)."""
    path = Path(path)
    check_checkpoint_path(path)
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})["xnornet"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise not_a_checkpoint(path, e) from e


def read_checkpoint(path) -> tuple[dict, dict, dict | None]:
    """-> (model state_dict, run metadata, optimizer state_dict or None)."""
    path = Path(path)
    check_checkpoint_path(path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        meta = json.loads(metadata["xnornet"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise not_a_checkpoint(path, e) from e
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_sd = None
    if "optim" in metadata:
        extra = json.loads(metadata["optim"])
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                pid, name = k[6:].split(".", 1)
                state.setdefault(int(pid), {})[name] = v
        for k, v in extra["scalars"].items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        optim_sd = {"state": dict(sorted(state.items())), "param_groups": extra["param_groups"]}
    return model_sd, meta, optim_sd


def load_model(path, device="cpu") -> tuple[Trunk, dict]:
    """Rebuild the model a checkpoint was trained as, in eval mode. -> (model, metadata)."""
    model_sd, meta, _ = read_checkpoint(path)
    try:
        model = Trunk(TrunkConfig(**meta["model_config"]))
        model.load_state_dict(model_sd)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match the model it describes: {e}") from e
    return model.to(device).eval(), meta
