"""One trial: its settings, a flat mapping of job keys applied to the job, and its identity.

A sweep's configuration is a set of job keys (``{"model.family": "dcn", "model.kernels": (4, 8, 16),
"train.lr": 0.003}``: the family, a DCN's kernels, every key the grid, the search or the follow-up
planner varies); a trial runs it with one seed, so its settings are those keys and ``train.seed``,
and its job is the sweep's job with them set (:func:`dcn_ray.job.sweep_grid.applied`). Any
searcher that produces a mapping of job keys thus produces a trial. :class:`TrialSpec` holds those
keys and the trial's identity and provenance (seed, phase, round, derived-from, reference);
everything that names a trial (Tune's config, its folder, MLflow tags and params, the results
table) goes through it.

>>> spec = TrialSpec.of((4, 8, 14), seed=1, phase="followup", round=1)
>>> spec.config_name, spec.name, spec.settings
('4-8-14', 'followup-4-8-14-s1', {'model.family': 'dcn', 'model.kernels': (4, 8, 14), 'train.seed': 1})
>>> TrialSpec.from_config(spec.to_config()) == spec
True
>>> TrialSpec({"model.family": "unet", "train.lr": 0.001}).name
'grid-unet_train.lr=0.001-s0'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dcn_ray.core.scores import BEST_VAL_HEADLINE
from dcn_ray.job.sweep_grid import FAMILY_KEY, KERNELS_KEY, Params, config_name, configuration_keys, plain
from dcn_ray.kernels import Kernels, check_kernels, kernels_text
from dcn_ray.models import DEFAULT_FAMILY, get

#: The metric a sweep optimises: the best validation IoU of a trial. Test scores are never used
#: for a choice; they are reported beside it.
METRIC = BEST_VAL_HEADLINE
Phase = Literal["grid", "search", "followup", "control", "sham", "random"]
#: grid: the job's configurations; search: the configurations a searcher suggested (``sweep.search``);
#: followup: guided by F1-F3; control: matched to the guided changes; sham: the reference's kernels with
#: the weak branch's start re-drawn (what a guided change re-draws, without the change); random: extra
#: random one-branch changes.
PHASES: tuple[str, ...] = ("grid", "search", "followup", "control", "sham", "random")
#: The job key of a trial's seed: in its settings, beside the identity's ``seed``.
SEED_KEY = "train.seed"
#: Tune's config keys of a trial's identity: never dotted, so never a job key (every varied job key is
#: ``section.key``). ``k1``-``k3`` spell the kernels out for Tune's tables and the results.
IDENTITY_KEYS = ("seed", "phase", "round", "derived_from", "reference", "reference_weak", "reference_scores")
#: The keys of Tune's config as :meth:`TrialSpec.to_config` wrote it before trials were job keys.
OLD_KEYS = ("kernels", "family", "grid_values")


@dataclass(frozen=True)
class TrialSpec:
    """A trial: its configuration's job keys, its training seed, its phase and its provenance."""

    #: The configuration's job keys, shared by its seeds: ``model.family`` first, ``model.kernels`` for a
    #: family that has kernels, then the keys the grid, search or planner varies, in their order.
    configuration: Params
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
        pairs = self.configuration.items() if isinstance(self.configuration, Mapping) else self.configuration
        values = {str(key): plain(value) for key, value in pairs}
        if SEED_KEY in values:
            raise ValueError(f"a trial's {SEED_KEY} is its seed, not a key of its configuration")
        family = str(values.pop(FAMILY_KEY, DEFAULT_FAMILY))
        kernels = values.pop(KERNELS_KEY, None)
        if get(family).uses_kernels:
            kernels = check_kernels(tuple(kernels or ()))
        elif kernels is not None:
            raise ValueError(f"a {family} trial has no kernels, got {kernels!r}")
        object.__setattr__(self, "configuration", configuration_keys(family, kernels, tuple(values.items())))
        if self.reference is not None:
            object.__setattr__(self, "reference", check_kernels(tuple(self.reference)))
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a spec pickled before trials were job keys (an older sweep's planner state holds
        its queued and finished trials with ``kernels``, ``family`` and ``grid_values``)."""
        if "configuration" not in state:
            identity = {key: state[key] for key in IDENTITY_KEYS if key in state}
            old = TrialSpec.of(
                state.get("kernels"), family=state.get("family", DEFAULT_FAMILY),
                grid_values=tuple(state.get("grid_values", ())), **identity,
            )  # fmt: skip
            state = dict(old.__dict__)
        self.__dict__.update(state)

    @classmethod
    def of(
        cls, kernels: Kernels | None, *, family: str = DEFAULT_FAMILY, grid_values: Params = (), **identity: Any
    ) -> TrialSpec:
        """The trial of a family, its kernels (None for a family without) and the values varied beside them."""
        return cls(configuration_keys(family, kernels, tuple(grid_values)), **identity)

    @property
    def settings(self) -> dict[str, Any]:
        """The trial's job keys: its configuration's and its seed (``train.seed``), applied to the job."""
        return {**dict(self.configuration), SEED_KEY: self.seed}

    @property
    def family(self) -> str:
        return str(self.configuration[0][1])

    @property
    def kernels(self) -> Kernels | None:
        """The DCN's ``model.kernels``; None for a family without kernels."""
        return dict(self.configuration).get(KERNELS_KEY)

    @property
    def grid_values(self) -> Params:
        """The keys varied beside the family and the kernels, ``(("train.lr", 0.001), ...)``."""
        return tuple((key, value) for key, value in self.configuration if key not in (FAMILY_KEY, KERNELS_KEY))

    @property
    def config_name(self) -> str:
        """The configuration, shared by all its seeds: ``4-8-16`` as the paper writes it, ``unet``, and
        any varied values: ``4-8-16_train.lr=0.001``."""
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
        """Tune's config: the trial's settings (flat job keys, plain values), then its identity under keys
        that are not job keys, and k1-k3 spelled out so Tune's tables show them (None without kernels)."""
        k1, k2, k3 = self.kernels if self.kernels is not None else (None, None, None)
        return {
            **{key: _listed(value) for key, value in self.settings.items()},
            "seed": self.seed,
            "phase": self.phase,
            "round": self.round,
            "derived_from": self.derived_from,
            "reference": list(self.reference) if self.reference else None,
            "reference_weak": self.reference_weak,
            "reference_scores": self.reference_scores,
            "k1": k1,
            "k2": k2,
            "k3": k3,
        }

    @staticmethod
    def holds(config: Mapping[str, Any] | None) -> bool:
        """Whether Tune's ``config`` is a trial's (written by :meth:`to_config`, now or before)."""
        return bool(config) and (FAMILY_KEY in config or bool(config.get("kernels") or config.get("family")))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        """The spec of a Tune config written by :meth:`to_config`, or by the ``to_config`` of before
        (``kernels``, ``family``, ``grid_values``: an older sweep's trials still resume)."""
        reference = config.get("reference")
        identity = {
            "seed": int(config.get("seed", config.get(SEED_KEY, 0))),
            "phase": config.get("phase", "grid"),
            "round": int(config.get("round", 0)),
            "derived_from": str(config.get("derived_from", "")),
            "reference": tuple(reference) if reference else None,
            "reference_weak": str(config.get("reference_weak", "")),
            "reference_scores": str(config.get("reference_scores", "")),
        }
        if FAMILY_KEY not in config:  # the old shape
            kernels = config.get("kernels")
            return cls.of(
                tuple(kernels) if kernels is not None else None,
                family=str(config.get("family", DEFAULT_FAMILY)),
                grid_values=tuple((key, value) for key, value in config.get("grid_values", ())),
                **identity,
            )
        return cls(tuple((k, v) for k, v in config.items() if "." in k and k != SEED_KEY), **identity)

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
        """MLflow params of the trial itself: k1-k3 (a DCN), seed, phase, and its configuration's job keys
        (``model.family``, ``model.kernels``, each varied value; the job's settings are logged beside them)."""
        kernels = dict(zip(("k1", "k2", "k3"), self.kernels)) if self.kernels is not None else {}
        keys = {key: _listed(value) for key, value in self.configuration}
        return {**kernels, "seed": self.seed, "phase": self.phase, **keys}


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, tuple) else value
