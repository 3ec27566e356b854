"""One trial's identity: family, kernels, the grid's values, seed, phase and where it came from.

A sweep runs every configuration (the grid's values x kernels (k1, k2, k3) for a DCN) once per
seed; follow-up rounds add guided changes of a reference and matched controls. Everything that
names a trial (Tune's config, its folder, MLflow tags and params, the results table) goes through
:class:`TrialSpec`.

>>> spec = TrialSpec((4, 8, 14), seed=1, phase="followup", round=1)
>>> spec.config_name, spec.name
('4-8-14', 'followup-4-8-14-s1')
>>> TrialSpec.from_config(spec.to_config()) == spec
True
>>> TrialSpec(None, family="unet", grid_values=(("train.lr", 0.001),)).name
'grid-unet_train.lr=0.001-s0'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from dcn_ray.core.scores import BEST_VAL_HEADLINE
from dcn_ray.job.sweep_grid import Params, config_name, plain
from dcn_ray.kernels import Kernels, check_kernels, kernels_text
from dcn_ray.models import get

#: The metric a sweep optimises: the best validation IoU of a trial. Test scores are never used
#: for a choice; they are reported beside it.
METRIC = BEST_VAL_HEADLINE
Phase = Literal["grid", "followup", "control", "sham", "random"]
#: grid: the job's configurations; followup: guided by F1-F3; control: matched to the guided
#: changes; sham: the reference's kernels with the weak branch's start re-drawn (what a guided
#: change re-draws, without the change); random: extra random one-branch changes.
PHASES: tuple[str, ...] = ("grid", "followup", "control", "sham", "random")


@dataclass(frozen=True)
class TrialSpec:
    """A trial: the family, its kernel triple (DCN; None otherwise), the grid's values, the training
    seed, its phase and its provenance."""

    kernels: Kernels | None
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
    #: The model family (:data:`dcn_ray.models.FAMILIES`).
    family: str = "dcn"
    #: The values ``sweep.grid`` sets for this configuration, ``(("train.lr", 0.001), ...)``.
    grid_values: Params = ()

    def __post_init__(self) -> None:
        if get(self.family).uses_kernels:
            object.__setattr__(self, "kernels", check_kernels(tuple(self.kernels or ())))
        elif self.kernels is not None:
            raise ValueError(f"a {self.family} trial has no kernels, got {self.kernels!r}")
        object.__setattr__(self, "grid_values", tuple((str(k), plain(v)) for k, v in self.grid_values))
        if self.reference is not None:
            object.__setattr__(self, "reference", check_kernels(tuple(self.reference)))
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def config_name(self) -> str:
        """The configuration, shared by all its seeds: ``4-8-16`` as the paper writes it, ``unet``, and
        any grid values: ``4-8-16_train.lr=0.001``."""
        return config_name(self.family, self.kernels, self.grid_values)

    @property
    def name(self) -> str:
        """``grid-4-8-16-s0``: unique within a sweep; Tune's trial name and the MLflow run name."""
        return f"{self.phase}-{self.config_name}-s{self.seed}"

    @property
    def key(self) -> tuple[Kernels | str, int]:
        """What makes a trial unique in a sweep: (kernels, seed) for a configuration of kernels alone
        (every DCN sweep without a grid), else (configuration name, seed)."""
        if self.kernels is not None and not self.grid_values:
            return self.kernels, self.seed
        return self.config_name, self.seed

    def to_config(self) -> dict[str, Any]:
        """Tune's config: plain values, k1-k3 spelled out so Tune's tables show them (None without kernels)."""
        fields = asdict(self)
        fields["kernels"] = list(self.kernels) if self.kernels is not None else None
        fields["reference"] = list(self.reference) if self.reference else None
        fields["grid_values"] = [[key, _listed(value)] for key, value in self.grid_values]
        k1, k2, k3 = self.kernels if self.kernels is not None else (None, None, None)
        return {**fields, "k1": k1, "k2": k2, "k3": k3}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        """The spec of a Tune config written by :meth:`to_config`."""
        reference, kernels = config.get("reference"), config.get("kernels")
        return cls(
            kernels=tuple(kernels) if kernels is not None else None,
            seed=int(config.get("seed", 0)),
            phase=config.get("phase", "grid"),
            round=int(config.get("round", 0)),
            derived_from=str(config.get("derived_from", "")),
            reference=tuple(reference) if reference else None,
            reference_weak=str(config.get("reference_weak", "")),
            reference_scores=str(config.get("reference_scores", "")),
            family=str(config.get("family", "dcn")),
            grid_values=tuple((key, value) for key, value in config.get("grid_values", ())),
        )

    def tags(self) -> dict[str, str]:
        """MLflow tags: ``config`` groups the seeds of one configuration in the UI."""
        return {
            "config": self.config_name,
            "kernels": kernels_text(self.kernels) if self.kernels is not None else "",
            "model_family": self.family,
            "trial_key": f"{self.config_name}-s{self.seed}",
            "phase": self.phase,
            "round": str(self.round),
            "derived_from": self.derived_from,
            "reference": kernels_text(self.reference) if self.reference else "",
            "weak_branch_of_reference": self.reference_weak,
            "reference_scores": self.reference_scores,
        }

    def params(self) -> dict[str, Any]:
        """MLflow params of the trial itself: k1-k3 (a DCN), seed, phase, and each grid value under its
        key (the job's settings, these values applied, are logged beside them)."""
        kernels = dict(zip(("k1", "k2", "k3"), self.kernels)) if self.kernels is not None else {}
        varied = {key: _listed(value) for key, value in self.grid_values}
        return {**kernels, "seed": self.seed, "phase": self.phase, "model.family": self.family, **varied}


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, tuple) else value
