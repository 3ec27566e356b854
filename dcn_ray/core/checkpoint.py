"""Self-describing checkpoints: everything ``predict`` and ``resume`` need, loadable with weights_only.

A checkpoint folder holds two files:

- ``model.pt`` the best model so far: format tag, model keyword arguments, the resolved job
  config, weights, its step and validation metrics. ``predict`` needs nothing else.
- ``state.pt`` the training state to resume from: current weights, optimizer state, sampler
  RNG state, step, best model, metric history, and ``finished`` once training is over.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dcn_ray.core.dcn import DCN
from dcn_ray.errors import InputError

FORMAT = "dcn-ray-checkpoint/1"
MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"


def save(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, then rename: never a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a dcn-ray checkpoint file safely; InputError for a corrupt or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path} is not a readable dcn-ray checkpoint ({message[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a dcn-ray checkpoint (no '{FORMAT}' format tag)")
    return payload


def model_from_payload(payload: dict[str, Any], *, path: Path | str = "checkpoint") -> DCN:
    """Rebuild the DCN of a model payload and load its weights."""
    try:
        model = DCN(**payload["model_kwargs"])
        model.load_state_dict(payload["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: checkpoint does not match the DCN ({first[:160]})") from None
    return model.eval()


def load_model(path: Path, *, map_location: str | torch.device = "cpu") -> tuple[DCN, dict[str, Any]]:
    """The model of a ``model.pt`` (or of a checkpoint folder) and its payload."""
    payload = load(path, map_location=map_location)
    return model_from_payload(payload, path=path), payload
