"""A search behind the planner seam: Tune's searcher suggests configurations, each runs once per seed.

:class:`SearchPlanner` answers the planner's questions (``next_trial``, ``complete``, ``finished``;
saved and restored by pickling it whole, inner searcher included) as the grid-with-follow-ups
planner does, so the same Tune adapter (:class:`dcn_ray.tune.searcher.GridThenFollowups`) and
the same trial, tracking and resume paths serve both. What it adds to Tune's searcher:

- **seeds**: a configuration the searcher suggests is queued once per seed of ``sweep.seeds``;
  when every seed has reported, the searcher is told the mean of their headline (the best
  validation IoU; a trial ASHA stopped counts with the best it reached, an errored one not at all);
- **no configuration twice**: a suggestion equal to one already tried is told that one's result
  at once and runs nothing (a search over ``choice`` keys draws repeats); it still counts;
- **the budget**: ``sweep.search.trials`` suggestions in all, also across a restart (the count and
  the searcher's random state are in the pickle, so a redraw after a restart is the same draw).

``random`` draws with Tune's own domains (``Domain.sample``, seeded by ``sweep.search.seed``: the
sampling Tune's ``BasicVariantGenerator`` does); Tune's generator itself makes Tune trials, so it
cannot stand behind this seam, which must run each configuration once per seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any, Generic, TypeVar

import numpy as np

from dcn_ray.job.search_config import SearchConfig
from dcn_ray.job.sweep_grid import FAMILY_KEY, KERNELS_KEY, configuration_keys, value_text
from dcn_ray.models import get
from dcn_ray.tune import search_algs
from dcn_ray.tune.spec import TrialSpec

log = logging.getLogger(__name__)
Spec = TypeVar("Spec")


class RandomDraws:
    """Tune's domains sampled with one seeded generator: a searcher that learns nothing."""

    def __init__(self, search: SearchConfig):
        self.domains = search_algs.tune_space(search)
        self.rng = np.random.default_rng(search.seed)

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return {key: domain.sample(random_state=self.rng) for key, domain in self.domains.items()}

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False) -> None:
        """Random search is told results and ignores them."""


@dataclass
class Configuration:
    """One suggested configuration: its job values, the searcher's ids waiting on it, its seeds' results."""

    values: dict[str, Any]
    waiting: list[str] = field(default_factory=list)
    results: dict[int, float | None] = field(default_factory=dict)  # seed -> headline (None: errored)
    stopped: set[int] = field(default_factory=set)  # seeds ASHA stopped early

    def mean(self) -> float | None:
        scores = [v for v in self.results.values() if v is not None]
        return fmean(scores) if scores else None


def configuration_name(values: Mapping[str, Any]) -> str:
    """``train.lr=0.00123_model.width=8``: the values in the space's order (names the seeds' group)."""
    return "_".join(f"{key}={value_text(value)}" for key, value in values.items())


class SearchPlanner(Generic[Spec]):
    """``search.trials`` configurations from Tune's searcher, each once per seed; the searcher told seed means."""

    def __init__(
        self,
        search: SearchConfig,
        seeds: Sequence[int],
        make_trial: Callable[[Mapping[str, Any], int], Spec],
        *,
        metric: str,
        mode: str,
        max_concurrent: int = 1,
    ) -> None:
        if not search.enabled:
            raise ValueError("a grid is planned by tune.planner.RoundPlanner, not by a search")
        self.search, self.seeds, self.make_trial, self.metric = search, tuple(seeds), make_trial, metric
        self.mode, self.max_concurrent = mode, max_concurrent
        self._searcher: Any = None  # made at the first draw: a dry run asks describe() without Ray or Optuna
        self.suggested = 0
        self.configurations: dict[str, Configuration] = {}
        self.queue: list[tuple[str, int]] = []
        self.running: dict[str, tuple[str, int]] = {}

    @property
    def searcher(self) -> Any:
        """The searcher: seeded draws of Tune's domains (random), or OptunaSearch under a ConcurrencyLimiter."""
        if self._searcher is None:
            search = self.search
            self._searcher = (
                RandomDraws(search)
                if search.algorithm == "random"
                else search_algs.search_algorithm(
                    search, metric=self.metric, mode=self.mode, max_concurrent=self.max_concurrent
                )
            )
        return self._searcher

    # ------------------------------------------------------------------ the planner's questions

    def next_trial(self, trial_id: str) -> Spec | None:
        """The next (configuration, seed) to run, or None (nothing now: wait, or :attr:`finished`)."""
        if trial_id in self.running:  # Tune asks again for a trial it restored
            name, seed = self.running[trial_id]
            return self.make_trial(self.configurations[name].values, seed)
        if not self.queue:
            self._draw()
        if not self.queue:
            return None
        name, seed = self.queue.pop(0)
        self.running[trial_id] = (name, seed)
        return self.make_trial(self.configurations[name].values, seed)

    def complete(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> None:
        """A trial ended: record its headline; when every seed of its configuration has, tell the searcher."""
        if trial_id not in self.running:
            return
        name, seed = self.running.pop(trial_id)
        configuration = self.configurations[name]
        value = None if error or not result or self.metric not in result else float(result[self.metric])
        configuration.results[seed] = value
        if result and value is not None and not result.get("finished"):
            configuration.stopped.add(seed)  # ended before its last step without an error: ASHA stopped it
        if len(configuration.results) == len(self.seeds):
            self._tell(configuration)

    @property
    def finished(self) -> bool:
        return self.suggested >= (self.search.trials or 0) and not self.queue and not self.running

    # ------------------------------------------------------------------ what a dry run shows

    def describe(self) -> list[str]:
        """The search as the dry run lists it: algorithm, budget, seeds, and each key's distribution."""
        search = self.search
        head = (
            f"{search.algorithm} search: {search.trials} configuration(s) x {len(self.seeds)} seed(s) = "
            f"{(search.trials or 0) * len(self.seeds)} trials at most (seed {search.seed})"
        )
        if search.algorithm == "optuna":
            head += f"; TPE models after {search_algs.startup_trials(search.trials or 1)} random configurations"
        lines = [head]
        for key, distribution in search.distributions().items():
            args = distribution.args[0] if distribution.kind == "choice" else distribution.args
            lines.append(f"  {key}: {distribution.kind} {[value_text(a) for a in args]}")
        return lines

    # ------------------------------------------------------------------ inside

    def _draw(self) -> None:
        """Ask the searcher until it gives a configuration not tried yet, or the budget is spent."""
        while self.suggested < (self.search.trials or 0):
            searcher_id = f"c{self.suggested}"
            config = self.searcher.suggest(searcher_id)
            if not isinstance(config, Mapping):  # None (the concurrency limit) or FINISHED
                return
            self.suggested += 1
            values = without_unused_kernels(search_algs.decode(self.search, config))
            name = configuration_name(values)
            known = self.configurations.get(name)
            if known is None:
                self.configurations[name] = Configuration(values, [searcher_id])
                self.queue += [(name, seed) for seed in self.seeds]
                log.info("search: configuration %d of %d: %s", self.suggested, self.search.trials, name)
                return
            log.info("search: %s suggested again: told its result, not rerun", name)
            known.waiting.append(searcher_id)
            if len(known.results) == len(self.seeds):
                self._tell(known)

    def _tell(self, configuration: Configuration) -> None:
        mean = configuration.mean()
        for searcher_id in configuration.waiting:
            if mean is None:
                self.searcher.on_trial_complete(searcher_id, None, error=True)
            else:
                self.searcher.on_trial_complete(searcher_id, {self.metric: mean})
        configuration.waiting.clear()


def without_unused_kernels(values: dict[str, Any]) -> dict[str, Any]:
    """The sampled values less ``model.kernels`` where the sampled family has none: two draws that differ
    only in a triple a U-Net ignores are one configuration (told its result, never run twice)."""
    family = values.get(FAMILY_KEY)
    if family is not None and not get(str(family)).uses_kernels:
        return {key: value for key, value in values.items() if key != KERNELS_KEY}
    return values


def trial_spec(values: Mapping[str, Any], seed: int, *, family: str, kernels: tuple[int, ...] | None) -> TrialSpec:
    """A search's trial (phase ``search``), named and tracked as the sweep's trials are: the sampled job
    keys as its configuration, the job's family and, for a family with kernels, the job's kernels
    unless the space sets them (``model.family``, ``model.kernels``)."""
    values = dict(values)
    family = str(values.pop(FAMILY_KEY, family))
    own = values.pop(KERNELS_KEY, kernels) if get(family).uses_kernels else None
    values.pop(KERNELS_KEY, None)  # a family without kernels ignores a sampled triple
    return TrialSpec(configuration_keys(family, own, tuple(values.items())), seed=seed, phase="search")
