"""The torch device to compute on."""

from __future__ import annotations

import torch

from dcn_ray.errors import InputError


def select_device(name: str | None = None) -> torch.device:
    """``name`` ("cpu" or "cuda"), else ``cuda`` when a GPU is visible, else ``cpu``.

    Asking for ``cuda`` where no GPU is visible is an InputError.
    """
    if name not in (None, "cpu", "cuda"):
        raise InputError(f"device {name!r}: choose cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible here")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
