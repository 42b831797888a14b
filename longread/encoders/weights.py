"""Checkpoint reading and strict loading shared by the native long-context encoders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["CheckpointKeyError", "load_strict", "read_state_dict", "read_config", "pick_device"]


class CheckpointKeyError(ValueError):
    """A checkpoint whose keys or shapes do not match the model; the message names them."""


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with errors that name the bad keys.

    Raises ``CheckpointKeyError`` listing missing keys, unexpected keys and shape mismatches
    (each with both shapes) before anything is copied.
    """
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_list(shapes)}")
    if problems:
        raise CheckpointKeyError(f"{what} does not match the model; " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` or ``pytorch_model.bin`` from a dir (or that file itself).

    ``.bin`` files are read with ``torch.load(weights_only=True)`` (never unpickled freely).
    Raises ``FileNotFoundError`` naming the files looked for.
    """
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "model.safetensors", path / "pytorch_model.bin", path / "model.bin"]
    for f in candidates:
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(f)))
        sd = torch.load(str(f), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state" in sd and isinstance(sd["state"], dict) and "model" in sd["state"]:
            sd = sd["state"]["model"]  # a composer training checkpoint
        if not isinstance(sd, dict):
            raise ValueError(f"{f}: expected a state dict, got {type(sd).__name__}")
        return sd
    raise FileNotFoundError(f"no weights found; looked for {', '.join(str(c) for c in candidates)}")


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a model dir as a dict; ``FileNotFoundError`` when absent."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} does not exist")
    with open(f, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{f}: expected a JSON object, got {type(data).__name__}")
    return data


def pick_device(device: str) -> torch.device:
    """``torch.device(device)``; raise ``ValueError`` when CUDA is asked for but absent."""
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    return d
