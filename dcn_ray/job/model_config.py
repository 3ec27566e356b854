"""The ``model`` section of a job: the family and its parameters, and their validation.

Split out of :mod:`dcn_ray.job.config` (which re-exports :class:`ModelConfig`), as
:mod:`dcn_ray.job.train_config` is. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from dcn_ray.models import FAMILIES


@dataclass(frozen=True)
class ModelConfig:
    #: The model family (:data:`dcn_ray.models.FAMILIES`): "dcn" (the default) or "unet".
    family: str = "dcn"
    #: Filters of the first block (DCN) or level (U-Net).
    width: int = 64
    batch_norm: bool = True
    #: U-Net only: the number of 2x2 poolings (1 to 6; the paper: 4).
    depth: int = 4
    #: DCN only. Noise on each branch's input features (in feature sd): a planted weakness, for
    #: validating the weak-branch rule; (0, 0, 0) for every real use.
    branch_noise: tuple[float, ...] = (0.0, 0.0, 0.0)
    #: DCN only. Branches (F1-F3) whose deconvolution starts from weights drawn apart from the
    #: reference's: a sham control (the re-draw of a guided kernel change, kernels kept); () normally.
    redraw: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for the tuples), as a job file or a checkpoint holds it."""
        return {**asdict(self), "branch_noise": list(self.branch_noise), "redraw": list(self.redraw)}


def validate_model(model: ModelConfig, need: Callable[[bool, str], None], *, crop: int) -> None:
    """Check the ``model`` section and that ``train.crop`` suits it; ``need(condition, message)`` raises."""
    need(
        model.family in FAMILIES,
        f"model.family must be one of {', '.join(FAMILIES)}, got {model.family!r}",
    )
    need(model.width >= 1, f"model.width must be >= 1, got {model.width}")
    need(1 <= model.depth <= 6, f"model.depth must be 1 to 6, got {model.depth}")
    need(
        len(model.branch_noise) == 3 and all(0 <= v < float("inf") for v in model.branch_noise),
        f"model.branch_noise must be three finite numbers >= 0 (F1, F2, F3), got {list(model.branch_noise)}",
    )
    need(
        all(name in ("F1", "F2", "F3") for name in model.redraw) and len(set(model.redraw)) == len(model.redraw),
        f"model.redraw must list distinct branches among F1, F2, F3, got {list(model.redraw)}",
    )
    if model.family != "dcn":
        need(not any(model.branch_noise), f"model.branch_noise applies to the DCN only, not to {model.family}")
        need(not model.redraw, f"model.redraw applies to the DCN only, not to {model.family}")
    family = FAMILIES[model.family]
    multiple = size_multiple(model)  # 8 for the DCN (train.crop's own rule), 2^depth for a U-Net
    name = family.title if family.uses_kernels else family.describe(model.to_dict())  # kernels come per trial
    need(crop % multiple == 0, f"train.crop={crop} must be a multiple of {multiple} for a {name}")


def size_multiple(model: ModelConfig) -> int:
    """The multiple the input sides of this section's network must have (its family's, from the registry)."""
    return FAMILIES[model.family].multiple(model.to_dict())
