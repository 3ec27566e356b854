"""``sweep.search`` and ``sweep.scheduler``: a search over any job key, and early stopping.

The grid (``sweep.grid``) runs every combination; a search tries a budget of ``trials``
configurations drawn from a space of Ray Tune distributions, each named as Tune names it::

    sweep:
      search:
        algorithm: optuna            # grid (the default: no search) | random | optuna
        trials: 16                   # configurations to try (each runs once per seed)
        seed: 0                      # the searcher's own seed: a search repeats exactly
        space:
          train.lr: {loguniform: [1.0e-4, 1.0e-2]}
          model.width: {choice: [8, 16]}
      scheduler: {algorithm: asha, grace_steps: 100, reduction_factor: 3}

The shape is checked here (pure, no job); whether each key is a job key and each bound a value
that key accepts is checked against the job by :func:`dcn_ray.job.search_space.check_search`, as a
grid value is. Nothing here imports Ray or Optuna.

>>> search = SearchConfig.from_raw({"algorithm": "random", "trials": 4,
...     "space": {"train": {"lr": {"loguniform": [1e-4, 1e-2]}}}})
>>> search.distributions()["train.lr"]
Distribution(kind='loguniform', args=(0.0001, 0.01))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dcn_ray.errors import InputError

#: What ``sweep.search.algorithm`` may name: ``grid`` is no search (today's sweep).
ALGORITHMS = ("grid", "random", "optuna")
#: Ray Tune's distributions and how many arguments each takes (``quniform: [low, high, q]``).
DISTRIBUTIONS: dict[str, int] = {
    "choice": 1,
    "uniform": 2,
    "loguniform": 2,
    "randint": 2,
    "quniform": 3,
    "qloguniform": 3,
}
#: The most configurations a search may try.
MAX_TRIALS = 10_000
SCHEDULERS = ("asha",)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _multiple(value: float, q: float) -> bool:
    return abs(value / q - round(value / q)) < 1e-9


@dataclass(frozen=True)
class Distribution:
    """One key's distribution: Tune's name and its arguments (``choice``: the tuple of options)."""

    kind: str
    args: tuple[Any, ...]

    def problem(self) -> str | None:
        """What is wrong with it (without the key), or None."""
        if self.kind not in DISTRIBUTIONS:
            return f"unknown distribution {self.kind!r} (one of {', '.join(DISTRIBUTIONS)})"
        if self.kind == "choice":
            (options,) = self.args
            if not options:
                return "choice must list at least one value"
            keys = [_hashable(o) for o in options]
            return f"choice lists a value twice: {list(options)}" if len(set(keys)) != len(keys) else None
        if not all(_number(a) for a in self.args):
            return f"{self.kind} takes finite numbers, got {list(self.args)}"
        low, high, *q = self.args
        if self.kind == "randint" and not all(isinstance(a, int) for a in self.args):
            return f"randint takes integers [low, high) (high excluded, as in Tune), got {list(self.args)}"
        if not low < high:
            return f"{self.kind} needs low < high, got [{low}, {high}]"
        if self.kind in ("loguniform", "qloguniform") and low <= 0:
            return f"{self.kind} needs low > 0, got {low}"
        if q:
            if q[0] <= 0:
                return f"{self.kind}'s step q must be > 0, got {q[0]}"
            if not (_multiple(low, q[0]) and _multiple(high, q[0])):
                return f"{self.kind}: low and high must be multiples of q={q[0]} (Tune rounds to multiples of q)"
        return None

    def bounds(self) -> tuple[Any, ...]:
        """The values to check against the job: every option, or both ends (randint: high - 1).

        A continuous distribution's ends are given as floats, as Tune samples them: an integer key
        then refuses it, naming the key (use ``randint``)."""
        if self.kind == "choice":
            return tuple(self.args[0])
        low, high = self.args[:2]
        return (low, high - 1) if self.kind == "randint" else (float(low), float(high))

    def to_raw(self) -> dict[str, Any]:
        """The job file's form: ``{"loguniform": [0.0001, 0.01]}``."""
        return {self.kind: list(self.args[0]) if self.kind == "choice" else list(self.args)}


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def distribution_of(raw: Any, key: str) -> Distribution:
    """``{"loguniform": [1e-4, 1e-2]}`` -> a checked :class:`Distribution` (InputError naming ``key``)."""
    if not (isinstance(raw, Mapping) and len(raw) == 1):
        raise InputError(
            f"sweep.search.space.{key} must be one distribution, e.g. {{loguniform: [0.0001, 0.01]}} "
            f"({', '.join(DISTRIBUTIONS)}), got {raw!r}"
        )
    ((kind, args),) = raw.items()
    if kind not in DISTRIBUTIONS:
        raise InputError(f"sweep.search.space.{key}: unknown distribution {kind!r} (one of {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list | tuple) or (kind != "choice" and len(args) != DISTRIBUTIONS[kind]):
        form = "a list of values" if kind == "choice" else f"a list of {DISTRIBUTIONS[kind]} numbers"
        raise InputError(f"sweep.search.space.{key}: {kind} takes {form}, got {args!r}")
    if kind != "choice":
        args = tuple(float(a) if isinstance(a, str) and _float(a) else a for a in args)  # YAML 1.1 reads 1e-3 as text
    distribution = Distribution(kind, (tuple(_hashable(a) for a in args),) if kind == "choice" else tuple(args))
    problem = distribution.problem()
    if problem:
        raise InputError(f"sweep.search.space.{key}: {problem}")
    return distribution


def _float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def flat_space(raw: Any, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted keys down to the distributions: ``{"train": {"lr": {...}}}`` -> ``{"train.lr": {...}}``.

    ``--set sweep.search.space.train.lr={loguniform: [...]}`` writes the nested form."""
    if not isinstance(raw, Mapping):
        raise InputError(f"sweep.search.space{'.' + prefix if prefix else ''} must map job keys to distributions")
    found: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise InputError(f"sweep.search.space: a key must be a job key, got {key!r}")
        dotted = f"{prefix}.{key}" if prefix else key
        section = isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values())
        if section and not any(k in DISTRIBUTIONS for k in value):  # {train: {lr: {...}}}
            found.update(flat_space(value, dotted))
        else:
            if dotted in found:
                raise InputError(f"sweep.search.space: {dotted} is given twice")
            found[dotted] = value
    return found


@dataclass(frozen=True)
class SearchConfig:
    """``sweep.search``: the algorithm, its budget of configurations, its seed and its space.

    ``space`` keeps the job file's form (``{"train.lr": {"loguniform": (1e-4, 1e-2)}}``), so that
    the job round-trips through its dict; :meth:`distributions` gives the checked objects."""

    algorithm: str = "grid"
    trials: int | None = None
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InputError(f"sweep.search.algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise InputError(f"sweep.search.seed must be an integer from 0 to 2**32 - 1, got {self.seed!r}")
        if self.algorithm == "grid":
            if self.space or self.trials is not None:
                raise InputError(
                    "sweep.search.space and sweep.search.trials need sweep.search.algorithm random or optuna "
                    "(a grid is sweep.grid)"
                )
            return
        trials = self.trials
        if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
            raise InputError(f"sweep.search.trials must be an integer from 1 to {MAX_TRIALS}, got {trials!r}")
        if not self.space:
            raise InputError(f"sweep.search.space must name at least one job key for {self.algorithm}")
        for key, distribution in self.distributions().items():
            if self.algorithm == "optuna" and distribution.kind == "qloguniform":
                raise InputError(
                    f"sweep.search.space.{key}: optuna cannot quantise a log scale (Optuna drops q); "
                    "use loguniform, or quniform"
                )

    @classmethod
    def from_raw(cls, raw: Any, key: str = "sweep.search") -> SearchConfig:
        """The section from the job file's mapping (nested or dotted space keys), checked."""
        if not isinstance(raw, Mapping):
            raise InputError(f"{key} must be a mapping of keys, got {raw!r}")
        known = ("algorithm", "trials", "seed", "space")
        for name in raw:
            if name not in known:
                raise InputError(f"unknown job key '{key}.{name}' (known keys here: {', '.join(known)})")
        space = {k: distribution_of(v, k).to_raw() for k, v in flat_space(raw.get("space") or {}).items()}
        return cls(
            algorithm=raw.get("algorithm", "grid"),
            trials=raw.get("trials"),
            seed=raw.get("seed", 0),
            space=space,
        )

    @property
    def enabled(self) -> bool:
        return self.algorithm != "grid"

    def distributions(self) -> dict[str, Distribution]:
        return {key: distribution_of(raw, key) for key, raw in self.space.items()}


@dataclass(frozen=True)
class SchedulerConfig:
    """``sweep.scheduler``: early stopping on the validation headline (None: every trial runs its steps).

    ASHA (Tune's ``ASHAScheduler``) looks at each trial at ``grace_steps`` training steps and then at
    ``reduction_factor`` times that, and so on, and stops those not in the top ``1 / reduction_factor``."""

    algorithm: str | None = None
    grace_steps: int = 100
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if self.algorithm is not None and self.algorithm not in SCHEDULERS:
            raise InputError(
                f"sweep.scheduler.algorithm must be {' or '.join(SCHEDULERS)} (or left out), got {self.algorithm!r}"
            )
        for name, least in (("grace_steps", 1), ("reduction_factor", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"sweep.scheduler.{name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def from_raw(cls, raw: Any, key: str = "sweep.scheduler") -> SchedulerConfig:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InputError(f"{key} must be a mapping of keys, e.g. {{algorithm: asha}}, got {raw!r}")
        known = ("algorithm", "grace_steps", "reduction_factor")
        for name in raw:
            if name not in known:
                raise InputError(f"unknown job key '{key}.{name}' (known keys here: {', '.join(known)})")
        return cls(**{name: raw[name] for name in known if name in raw})

    @property
    def enabled(self) -> bool:
        return self.algorithm is not None
