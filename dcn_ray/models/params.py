"""The built-in families' own ``model.*`` keys: one frozen dataclass per family, validating itself.

A job's ``model`` section is read against its family's dataclass (:attr:`dcn_ray.models.Family.params`),
so a key of another family is refused by name. A ValueError here names the job key; the job reader
turns it into one line. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dcn_ray.kernels import BRANCHES, REFERENCE, kernel_problem


def check_width(width: int) -> None:
    """ValueError unless ``model.width`` is a whole number >= 1 (every built-in family has one)."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"model.width must be >= 1, got {width}")


@dataclass(frozen=True)
class DCNParams:
    """The DCN's keys."""

    #: The deconvolution kernels (k1, k2, k3) of the side branches F1-F3; ``sweep.kernels`` lists the
    #: values a sweep gives this key (one configuration each), as ``sweep.grid`` does for any key.
    kernels: tuple[int, ...] = REFERENCE
    #: Filters of the first block.
    width: int = 64
    batch_norm: bool = True
    #: Noise on each branch's input features (in feature sd): a planted weakness, for validating the
    #: weak-branch rule; (0, 0, 0) for every real use.
    branch_noise: tuple[float, ...] = (0.0, 0.0, 0.0)
    #: Branches (F1-F3) whose deconvolution starts from weights drawn apart from the reference's: a
    #: sham control (the re-draw of a guided kernel change, kernels kept); () normally.
    redraw: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = kernel_problem(tuple(self.kernels))
        if problem:
            raise ValueError(f"model.kernels: {problem}")
        check_width(self.width)
        noise = tuple(self.branch_noise)
        if len(noise) != 3 or not all(isinstance(v, int | float) and 0 <= v and math.isfinite(v) for v in noise):
            raise ValueError(
                f"model.branch_noise must be three finite numbers >= 0 (F1, F2, F3), got {list(self.branch_noise)}"
            )
        redraw = tuple(self.redraw)
        if not all(name in BRANCHES for name in redraw) or len(set(redraw)) != len(redraw):
            raise ValueError(f"model.redraw must list distinct branches among F1, F2, F3, got {list(redraw)}")


@dataclass(frozen=True)
class UNetParams:
    """The U-Net's keys."""

    #: The number of 2x2 poolings (1 to 6; the paper: 4).
    depth: int = 4
    #: Filters of the first level.
    width: int = 64
    batch_norm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not 1 <= self.depth <= 6:
            raise ValueError(f"model.depth must be 1 to 6, got {self.depth}")
        check_width(self.width)
