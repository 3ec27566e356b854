"""Self-describing checkpoints: everything ``predict`` and ``resume`` need, loadable with weights_only.

A checkpoint folder holds two files:

- ``model.pt`` the best model so far: format tag, model family (``model_family``; a checkpoint
  without it is a DCN, as every checkpoint before model families was), model keyword arguments,
  the resolved job config, weights, its step and validation metrics, and the serial-section
  ``context`` N the model reads (2N + 1 slices as its ``in_channels``; a checkpoint without it
  reads one slice, as every checkpoint before context did). ``predict`` needs nothing else.
- ``state.pt`` the training state to resume from: current weights, optimizer state, sampler
  RNG state, step, best model, metric history, and ``finished`` once training is over.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcn_ray import models
from dcn_ray.errors import InputError, first_line
from dcn_ray.io.paths import input_file

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
    if not os.path.lexists(path):
        raise InputError(f"model file not found: {path}")
    input_file(path, "model file")  # a FIFO or device would block torch.load; a symlink loop is named
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        raise InputError(f"{path} is not a readable dcn-ray checkpoint ({first_line(error, 160)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a dcn-ray checkpoint (no '{FORMAT}' format tag)")
    return payload


def family_of_payload(payload: dict[str, Any], *, path: Path | str = "checkpoint") -> models.Family:
    """The model family a payload names (``model_family``); a DCN when it names none (old checkpoints)."""
    name = models.family_name(payload)
    if not isinstance(name, str) or name not in models.FAMILIES:
        raise InputError(f"{path}: unknown model family {name!r} (known: {', '.join(models.FAMILIES)})")
    return models.FAMILIES[name]


def model_from_payload(payload: dict[str, Any], *, path: Path | str = "checkpoint") -> nn.Module:
    """Rebuild the network of a model payload (of the family it names) and load its weights."""
    family = family_of_payload(payload, path=path)
    try:
        model = models.build(family.name, **payload["model_kwargs"])
        model.load_state_dict(payload["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: checkpoint does not match the {family.title} ({first_line(error, 160)})") from None
    recorded = payload.get("context", 0)
    if recorded != models.context_of(model):
        raise InputError(
            f"{path}: checkpoint records context {recorded!r} but its model reads "
            f"{model.kwargs.get('in_channels', 1)} input channels (context {models.context_of(model)})"
        )
    return model.eval()


def load_model(path: Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``model.pt`` (or of a checkpoint folder) and its payload.

    Weights or batch-norm statistics that are NaN or infinite (a diverged training) are refused:
    such a model predicts nothing useful.
    """
    payload = load(path, map_location=map_location)
    model = model_from_payload(payload, path=path)
    name = first_non_finite(payload["weights"])
    if name is not None:
        raise InputError(f"{path}: the model's {name} holds NaN or infinite values (did training diverge?)")
    return model, payload


class Diverged(RuntimeError):
    """Training whose loss or weights became NaN or infinite: a failed trial, never a finished one."""


def first_non_finite(weights: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``weights`` (a state dict) holding NaN or inf."""
    for name, tensor in weights.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def model_payload(model: nn.Module, *, config: dict[str, Any], step: int, metrics: dict[str, float]) -> dict[str, Any]:
    """The ``model.pt`` payload: what ``predict`` needs, and the step and metrics it was chosen at.

    ``kernels`` is kept for a DCN (older readers look there); other families have none."""
    family = models.family_of(model)
    payload: dict[str, Any] = {"format": FORMAT, "model_family": family.name, "model_kwargs": dict(model.kwargs)}
    payload["config"] = config
    payload["context"] = models.context_of(model)
    if family.uses_kernels:
        payload["kernels"] = list(model.kernels)
    return {**payload, "weights": _cpu_weights(model), "step": step, "metrics": dict(metrics)}


def state_payload(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    step: int,
    history: list[dict[str, float]],
    best: dict[str, Any],
    finished: bool,
) -> dict[str, Any]:
    """The ``state.pt`` payload to resume training from exactly where it stopped."""
    return {
        "format": FORMAT,
        "weights": _cpu_weights(model),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "history": list(history),
        "best": best,
        "finished": finished,
    }


def finished_state_payload(best: dict[str, Any], *, step: int, history: list[dict[str, float]]) -> dict[str, Any]:
    """A finished ``state.pt`` payload (no optimizer: nothing is left to train)."""
    return {"format": FORMAT, "step": step, "history": list(history), "best": best, "finished": True}
