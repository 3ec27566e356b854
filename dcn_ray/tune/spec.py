"""One trial's identity: kernels, seed, phase and where it came from, in one place.

A sweep runs every configuration (k1, k2, k3) once per seed; follow-up rounds add guided
changes of a reference and matched controls. Everything that names a trial (Tune's config,
its folder, MLflow tags and params, the results table) goes through :class:`TrialSpec`.

>>> spec = TrialSpec((4, 8, 14), seed=1, phase="followup", round=1)
>>> spec.config_name, spec.name
('4-8-14', 'followup-4-8-14-s1')
>>> TrialSpec.from_config(spec.to_config()) == spec
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from dcn_ray.core.kernels import Kernels, check_kernels, kernels_text

#: The metric a sweep optimises: the best validation IoU of a trial. Test scores are never used
#: for a choice; they are reported beside it.
METRIC = "best_val_iou"
Phase = Literal["grid", "followup", "control", "random"]
#: grid: the job's configurations; followup: guided by F1-F3; control: matched to the guided
#: changes; random: extra random one-branch changes.
PHASES: tuple[str, ...] = ("grid", "followup", "control", "random")


@dataclass(frozen=True)
class TrialSpec:
    """A trial: the kernel triple, the training seed, its phase and its provenance."""

    kernels: Kernels
    seed: int = 0
    phase: Phase = "grid"
    #: 0 for the grid; n for the n-th follow-up round.
    round: int = 0
    #: MLflow run id(s) of the reference trial(s) a follow-up derives from.
    derived_from: str = ""
    #: The reference configuration and its weak branch, for follow-ups and controls.
    reference: Kernels | None = None
    reference_weak: str = ""
    #: The reference's branch scores, ``contrast_F1=0.91,...`` (what the choice was made from).
    reference_scores: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", check_kernels(tuple(self.kernels)))
        if self.reference is not None:
            object.__setattr__(self, "reference", check_kernels(tuple(self.reference)))
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def config_name(self) -> str:
        """The configuration as the paper writes it: ``4-8-16`` (shared by all its seeds)."""
        return kernels_text(self.kernels)

    @property
    def name(self) -> str:
        """``grid-4-8-16-s0``: unique within a sweep; Tune's trial name and the MLflow run name."""
        return f"{self.phase}-{self.config_name}-s{self.seed}"

    @property
    def key(self) -> tuple[Kernels, int]:
        """What makes a trial unique in a sweep: (kernels, seed)."""
        return self.kernels, self.seed

    def to_config(self) -> dict[str, Any]:
        """Tune's config: plain values, k1-k3 spelled out so Tune's tables show them."""
        fields = asdict(self)
        fields["kernels"] = list(self.kernels)
        fields["reference"] = list(self.reference) if self.reference else None
        return {**fields, "k1": self.kernels[0], "k2": self.kernels[1], "k3": self.kernels[2]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        """The spec of a Tune config written by :meth:`to_config`."""
        reference = config.get("reference")
        return cls(
            kernels=tuple(config["kernels"]),
            seed=int(config.get("seed", 0)),
            phase=config.get("phase", "grid"),
            round=int(config.get("round", 0)),
            derived_from=str(config.get("derived_from", "")),
            reference=tuple(reference) if reference else None,
            reference_weak=str(config.get("reference_weak", "")),
            reference_scores=str(config.get("reference_scores", "")),
        )

    def tags(self) -> dict[str, str]:
        """MLflow tags: ``config`` groups the seeds of one configuration in the UI."""
        return {
            "config": self.config_name,
            "kernels": self.config_name,
            "trial_key": f"{self.config_name}-s{self.seed}",
            "phase": self.phase,
            "round": str(self.round),
            "derived_from": self.derived_from,
            "reference": kernels_text(self.reference) if self.reference else "",
            "weak_branch_of_reference": self.reference_weak,
            "reference_scores": self.reference_scores,
        }

    def params(self) -> dict[str, Any]:
        """MLflow params of the trial itself (the job's settings are logged beside them)."""
        return {
            "k1": self.kernels[0],
            "k2": self.kernels[1],
            "k3": self.kernels[2],
            "seed": self.seed,
            "phase": self.phase,
        }
