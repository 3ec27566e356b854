"""Model families: one :class:`Family` entry each, built in (the DCN, the U-Net) or brought by a package.

A family is declared once, here or in a package of its own registering it under the Python entry
point group ``dcn_ray.models`` (``toy = "my_package:FAMILY"``, as napari and pytest find plugins):
its network (an import path ``"module:Class"``, or a builder), its own ``model.*`` parameters (a
frozen dataclass validating itself, so a job of one family cannot carry another's key unnoticed),
its size multiple, receptive radius, branches or not, input channels and paper. Training, the
checkpoints, prediction, ``inspect`` and ``export`` all read that one entry. Every family's network:

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
with it before torch loads); a network's module is imported when a model is built.

>>> get("unet").job_kwargs({"depth": 3, "width": 8, "batch_norm": True})
{'depth': 3, 'width': 8, 'batch_norm': True, 'in_channels': 1}
>>> get("dcn").radius({"kernels": [4, 8, 16]}), get("unet").radius({"depth": 4})
(54, 122)
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from dcn_ray.kernels import STRIDES, kernels_text
from dcn_ray.models.params import DCNParams, UNetParams

log = logging.getLogger(__name__)

#: The entry point group a package registers a family in (its value: a :class:`Family`).
ENTRY_POINTS = "dcn_ray.models"
#: The family of a network or checkpoint that names none: every checkpoint before families was a DCN.
DEFAULT_FAMILY = "dcn"
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


def _dcn_text(kwargs: Mapping[str, Any]) -> str:
    """``kernels 4-8-16``; a sham control: ``kernels 4-8-16, F3's start re-drawn (sham)``."""
    redrawn = ", ".join(kwargs.get("redraw") or ())
    return f"kernels {kernels_text(tuple(kwargs['kernels']))}" + (
        f", {redrawn}'s start re-drawn (sham)" if redrawn else ""
    )


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


@dataclass(frozen=True)
class Family:
    """One model family: everything the rest of dcn-ray knows of it."""

    name: str
    title: str
    #: The network: ``"module:Class"`` (imported when a model is built; what ``export`` inlines), or a builder.
    network: str | Callable[..., Any]
    #: The family's ``model.*`` keys: a frozen dataclass with defaults that raises ValueError on bad values.
    params: type
    #: ``model.kwargs`` -> the multiple that input sides must have.
    multiple: Callable[[Mapping[str, Any]], int]
    #: ``model.kwargs`` -> the receptive radius in pixels (an upper bound): tiling overlap and halos.
    radius: Callable[[Mapping[str, Any]], int]
    #: ``model.kwargs`` -> one line naming the model (``kernels 4-8-16``, ``U-Net depth 4, width 64``).
    describe: Callable[[Mapping[str, Any]], str]
    #: Whether the F1-F3 branch analysis, the weak branch and guided follow-ups apply.
    branches: bool = False
    #: Whether the family has the key ``model.kernels`` (k1, k2, k3), whose values ``sweep.kernels`` lists.
    uses_kernels: bool = False
    #: The image channels its network takes.
    in_channels: int = 1
    #: The architecture's paper as (text, DOI or URL): the citation of an exported package.
    paper: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"a family name must be a lower-case identifier, got {self.name!r}")
        if not (dataclasses.is_dataclass(self.params) and isinstance(self.params, type)):
            raise ValueError(f"family {self.name}: params must be a dataclass, got {self.params!r}")
        if self.uses_kernels != ("kernels" in {f.name for f in dataclasses.fields(self.params)}):
            raise ValueError(f"family {self.name}: uses_kernels must say whether its params have 'kernels'")
        if isinstance(self.network, str) and ":" not in self.network:
            raise ValueError(f"family {self.name}: network must be 'module:Class', got {self.network!r}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The ``model.*`` job keys the family reads (others do not apply to it)."""
        return tuple(f.name for f in dataclasses.fields(self.params))

    @property
    def source(self) -> tuple[str, str] | None:
        """The module and class of the network, or None for a family built by a function."""
        if not isinstance(self.network, str):
            return None
        module, _, name = self.network.partition(":")
        return module, name

    def builder(self, **kwargs: Any):
        """``builder(**kwargs, seed=...)`` -> the network (an ``nn.Module``)."""
        if callable(self.network):
            return self.network(**kwargs)
        module, name = self.source  # type: ignore[misc]
        return getattr(importlib.import_module(module), name)(**kwargs)

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The family's parameters from the job's ``model`` keys it reads (defaults for the others)."""
        return self.params(**{key: values[key] for key in self.keys if key in values})

    def job_kwargs(self, model: Mapping[str, Any]) -> dict[str, Any]:
        """The job's ``model`` section (a mapping) -> the network's architecture arguments (a DCN's
        ``kernels`` among them; no seed); ``in_channels`` counts the 2N + 1 slices a ``model.context`` of N reads (every family)."""
        values = dataclasses.asdict(self.parameters(model))
        channels = self.in_channels * (2 * int(model.get("context", 0)) + 1)
        return {key: _plain(value) for key, value in values.items()} | {"in_channels": channels}


BUILT_IN: dict[str, Family] = {
    "dcn": Family(
        name="dcn",
        title="DCN",
        network="dcn_ray.models.dcn:DCN",
        params=DCNParams,
        multiple=lambda kwargs: 8,
        radius=lambda kwargs: dcn_receptive_radius(kwargs["kernels"]),
        describe=_dcn_text,
        branches=True,
        uses_kernels=True,
        paper=(
            "Chen, Qi, Cheng, Heng: Deep Contextual Networks for Neuronal Structure Segmentation. AAAI 2016",
            "https://scholar.google.com/scholar?q=Deep+Contextual+Networks+for+Neuronal+Structure+Segmentation",
        ),
    ),
    "unet": Family(
        name="unet",
        title="U-Net",
        network="dcn_ray.models.unet:UNet",
        params=UNetParams,
        multiple=lambda kwargs: 2 ** int(kwargs["depth"]),
        radius=lambda kwargs: unet_receptive_radius(int(kwargs["depth"])),
        describe=lambda kwargs: f"U-Net depth {kwargs['depth']}, width {kwargs['width']}",
        paper=(
            "Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015",
            "https://doi.org/10.1007/978-3-319-24574-4_28",
        ),
    ),
}


class Registry(Mapping[str, Family]):
    """Every family: the built-in ones, then those registered under :data:`ENTRY_POINTS` (read once).

    A registered family that fails to load, is not a :class:`Family`, is named unlike its entry
    point or takes a built-in name is left out with a warning: one broken package never stops dcn-ray.
    """

    def __init__(self, built_in: Mapping[str, Family]) -> None:
        self._built_in = dict(built_in)
        self._found: dict[str, Family] | None = None

    def refresh(self) -> None:
        """Read the entry points again (after a package was installed into this process)."""
        self._found = None

    def _families(self) -> dict[str, Family]:
        if self._found is None:
            found = dict(self._built_in)
            for point in entry_points(group=ENTRY_POINTS):
                try:
                    family = point.load()
                except Exception as error:  # a broken plugin: any error of its import
                    log.warning("model family %r (%s) failed to load: %s", point.name, point.value, error)
                    continue
                if not isinstance(family, Family) or family.name != point.name or point.name in found:
                    log.warning("entry point %r (%s) is not a new dcn-ray Family of that name", point.name, point.value)
                    continue
                found[family.name] = family
            self._found = found
        return self._found

    def __getitem__(self, name: str) -> Family:
        return self._families()[name]

    def __iter__(self):
        return iter(self._families())

    def __len__(self) -> int:
        return len(self._families())


#: Every family by name (the built-in ones first); a Mapping.
FAMILIES = Registry(BUILT_IN)


def get(name: str) -> Family:
    """The family called ``name``; ValueError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def build(family: str, **kwargs: Any):
    """Build a network of ``family`` from its keyword arguments (torchvision's ``get_model``)."""
    return get(family).builder(**kwargs)


def family_name(named: Any) -> str:
    """The family a network (class attribute ``family``) or a checkpoint payload (``model_family``) names;
    :data:`DEFAULT_FAMILY` when it names none (every network and checkpoint before families was a DCN)."""
    if isinstance(named, Mapping):
        return named.get("model_family", DEFAULT_FAMILY)
    return getattr(named, "family", DEFAULT_FAMILY)


def family_of(model: Any) -> Family:
    """The family of a built network."""
    return get(family_name(model))


def receptive_radius(model: Any) -> int:
    """The receptive radius of a built network (pixels, an upper bound)."""
    return family_of(model).radius(model.kwargs)


def size_multiple(model: Any) -> int:
    """The multiple that the input sides of a built network must have."""
    return family_of(model).multiple(model.kwargs)


def context_of(model: Any) -> int:
    """The serial-section context N of a built network: it reads 2N + 1 slices (each of its family's
    ``in_channels``) as channels (:mod:`dcn_ray.core.context`); 0 for a single-slice network."""
    family = family_of(model)
    channels = int(model.kwargs.get("in_channels", family.in_channels))
    slices, rest = divmod(channels, family.in_channels)
    if rest or slices % 2 == 0:
        raise ValueError(f"in_channels {channels} is not 2 * context + 1 slices of {family.in_channels} channel(s)")
    return (slices - 1) // 2


def describe(model: Any) -> str:
    """One line naming a built network: ``kernels 4-8-16`` for a DCN, ``U-Net depth 4, width 64``
    (``, context 2`` added for a network reading neighbouring slices)."""
    context = context_of(model)
    return family_of(model).describe(model.kwargs) + (f", context {context}" if context else "")
