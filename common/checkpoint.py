"""Atomic, versioned checkpoints with clean keys.

A checkpoint is written to a temporary file in the same folder and renamed with os.replace, which
is atomic on POSIX and Windows, so a crash mid-save leaves the previous file intact. Loading uses
torch.load(weights_only=True): only tensors and plain containers, never arbitrary pickled code.
"""

import os
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError

FORMAT_VERSION = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP (`.module`) and torch.compile (`._orig_mod`) wrappers so keys are the plain model's."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: Path, state: dict) -> None:
    """Write state to path atomically: temporary file, fsync, then rename over the old file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = {"format_version": FORMAT_VERSION, **state}
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint written by save_checkpoint, or raise UserError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a run directory that has checkpoints/last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is corrupted or not a checkpoint") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"checkpoint {path} has format version {found!r}, expected {FORMAT_VERSION}; it was not written by this code")
    return state


def load_model_state(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load weights with strict keys and shapes; a mismatch names the first differences."""
    own = unwrap_model(model).state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        if reshaped:
            parts.append(f"shape mismatches {reshaped[:3]}")
        raise UserError(
            f"checkpoint {source} does not match the model ({'; '.join(parts)}); "
            f"resume with the config the checkpoint was trained with"
        )
    unwrap_model(model).load_state_dict(state_dict, strict=True)
