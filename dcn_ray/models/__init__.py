"""Model families: name -> builder, and what training, prediction and reporting need of a model.

A family is one :class:`Family` entry in :data:`FAMILIES`. Every family's network:

- takes keyword-only, typed, validated arguments and keeps the architecture ones as plain values
  in ``model.kwargs`` (``build(family, **model.kwargs)`` rebuilds it; checkpoints store both);
- takes ``seed`` and initialises each layer with :func:`dcn_ray.models.init.init_weights`, so
  trials of one seed pair across families' shared layer names and within a family exactly;
- carries its family's name as the class attribute ``family``;
- returns a :class:`dcn_ray.models.outputs.SegmentationOutput`: ``fused`` (the logits, N x 2 x H x W,
  what the loss, validation and the predictor use) and ``branches`` (auxiliary logits that the
  loss adds with the decaying ``aux`` weight: F1-F3 for the DCN, none for the U-Net).

The F1-F3 branch analysis (weak branch, guided follow-ups, ``dcn-ray inspect``) applies only to
families with ``branches=True``: the DCN. This module imports no torch (the job file is checked
with it before torch loads); the builders import their network when called.

>>> get("unet").job_kwargs({"depth": 3, "width": 8, "batch_norm": True})
{'depth': 3, 'width': 8, 'batch_norm': True, 'in_channels': 1}
>>> get("dcn").radius({"kernels": [4, 8, 16]}), get("unet").radius({"depth": 4})
(54, 122)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dcn_ray.kernels import STRIDES, kernels_text

#: Receptive-field width of the DCN trunk at the features of branches F1, F2, F3 (strides 2, 4, 8).
TRUNK_FIELD = (14, 40, 92)


def dcn_receptive_radius(kernels: Sequence[int]) -> int:
    """How far (pixels, an upper bound) the input behind one DCN output pixel reaches to each side.

    Each branch sees the trunk's field at its features plus ``ceil(k / s) - 1`` feature pixels
    of its deconvolution; half of the widest, plus half a pooling cell for the alignment.
    """
    widths = (field + (math.ceil(k / s) - 1) * s for field, k, s in zip(TRUNK_FIELD, kernels, STRIDES))
    return max(widths) // 2 + 8 // 2


def unet_receptive_radius(depth: int) -> int:
    """An upper bound of a U-Net's reach: two 3x3 convolutions per level and side (radius ``2 s`` at
    scale ``s``), ``s`` for each pooling and each 2x2 up-convolution: ``8 * 2**depth - 6``."""
    return 8 * 2**depth - 6


def _dcn_kwargs(model: Mapping[str, Any]) -> dict[str, Any]:
    noise = [float(v) for v in model.get("branch_noise", (0.0, 0.0, 0.0))]
    kwargs = {"width": model["width"], "batch_norm": model["batch_norm"], "in_channels": 1, "branch_noise": noise}
    if model.get("redraw"):  # a sham control (dcn_ray.models.dcn.DCN's redraw)
        kwargs["redraw"] = [str(name) for name in model["redraw"]]
    return kwargs


def _dcn_text(kwargs: Mapping[str, Any]) -> str:
    """``kernels 4-8-16``; a sham control: ``kernels 4-8-16, F3's start re-drawn (sham)``."""
    redrawn = ", ".join(kwargs.get("redraw") or ())
    return f"kernels {kernels_text(tuple(kwargs['kernels']))}" + (
        f", {redrawn}'s start re-drawn (sham)" if redrawn else ""
    )


def _unet_kwargs(model: Mapping[str, Any]) -> dict[str, Any]:
    return {"depth": model["depth"], "width": model["width"], "batch_norm": model["batch_norm"], "in_channels": 1}


def _build_dcn(**kwargs: Any):
    from dcn_ray.models.dcn import DCN

    return DCN(**kwargs)


def _build_unet(**kwargs: Any):
    from dcn_ray.models.unet import UNet

    return UNet(**kwargs)


@dataclass(frozen=True)
class Family:
    """What the rest of dcn-ray needs to know of one model family."""

    name: str
    title: str
    #: The ``model.*`` job keys the family reads (its parameters; others do not apply to it).
    params: tuple[str, ...]
    #: Whether the F1-F3 branch analysis, the weak branch and guided follow-ups apply.
    branches: bool
    #: Whether ``sweep.kernels`` (k1, k2, k3) is an argument of the family.
    uses_kernels: bool
    #: ``builder(**kwargs, seed=...)`` -> the network (an ``nn.Module``).
    builder: Callable[..., Any]
    #: ``model.kwargs`` -> the multiple that input sides must have.
    multiple: Callable[[Mapping[str, Any]], int]
    #: ``model.kwargs`` -> the receptive radius in pixels (an upper bound): tiling overlap and halos.
    radius: Callable[[Mapping[str, Any]], int]
    #: ``model.kwargs`` -> one line naming the model (``kernels 4-8-16``, ``U-Net depth 4, width 64``).
    describe: Callable[[Mapping[str, Any]], str]
    #: The job's ``model`` section (a mapping) -> the family's architecture arguments (no kernels, no seed).
    job_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]]


FAMILIES: dict[str, Family] = {
    "dcn": Family(
        name="dcn",
        title="DCN",
        params=("width", "batch_norm", "branch_noise", "redraw"),
        branches=True,
        uses_kernels=True,
        builder=_build_dcn,
        multiple=lambda kwargs: 8,
        radius=lambda kwargs: dcn_receptive_radius(kwargs["kernels"]),
        describe=_dcn_text,
        job_kwargs=_dcn_kwargs,
    ),
    "unet": Family(
        name="unet",
        title="U-Net",
        params=("depth", "width", "batch_norm"),
        branches=False,
        uses_kernels=False,
        builder=_build_unet,
        multiple=lambda kwargs: 2 ** int(kwargs["depth"]),
        radius=lambda kwargs: unet_receptive_radius(int(kwargs["depth"])),
        describe=lambda kwargs: f"U-Net depth {kwargs['depth']}, width {kwargs['width']}",
        job_kwargs=_unet_kwargs,
    ),
}


def get(name: str) -> Family:
    """The family called ``name``; ValueError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def build(family: str, **kwargs: Any):
    """Build a network of ``family`` from its keyword arguments (torchvision's ``get_model``)."""
    return get(family).builder(**kwargs)


def family_of(model: Any) -> Family:
    """The family of a built network (its class attribute ``family``; the DCN when it has none)."""
    return get(getattr(model, "family", "dcn"))


def receptive_radius(model: Any) -> int:
    """The receptive radius of a built network (pixels, an upper bound)."""
    return family_of(model).radius(model.kwargs)


def size_multiple(model: Any) -> int:
    """The multiple that the input sides of a built network must have."""
    return family_of(model).multiple(model.kwargs)


def describe(model: Any) -> str:
    """One line naming a built network: ``kernels 4-8-16`` for a DCN, ``U-Net depth 4, width 64``."""
    return family_of(model).describe(model.kwargs)
