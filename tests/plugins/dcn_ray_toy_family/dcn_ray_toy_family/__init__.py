"""The model family ``toy``, registered with dcn-ray through the entry point group ``dcn_ray.models``.

This module is what dcn-ray loads to know the family: torch-free (the job file is checked before
torch loads); the network lives in :mod:`dcn_ray_toy_family.network`, imported when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcn_ray.models import Family


@dataclass(frozen=True)
class ToyParams:
    """The ``model.*`` keys of a toy network (a job of another family refuses them)."""

    width: int = 4
    #: The side of the toy's convolutions (odd): its own key, which no other family has.
    toy_kernel: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"model.width must be >= 1, got {self.width!r}")
        if self.toy_kernel not in (1, 3, 5):
            raise ValueError(f"model.toy_kernel must be 1, 3 or 5, got {self.toy_kernel!r}")


def radius(kwargs) -> int:
    """A bound of the reach: a convolution at scale 1, one at scale 2, the pooling and the up-convolution."""
    half = int(kwargs["toy_kernel"]) // 2
    return half + 2 * half + 2 + 1


FAMILY = Family(
    name="toy",
    title="Toy net",
    network="dcn_ray_toy_family.network:ToyNet",
    params=ToyParams,
    multiple=lambda kwargs: 2,
    radius=radius,
    describe=lambda kwargs: f"toy width {kwargs['width']}, kernel {kwargs['toy_kernel']}",
    paper=("A test family of dcn-ray (no paper)", "https://example.org/dcn-ray-toy-family"),
)
