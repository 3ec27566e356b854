"""The Tune search algorithm of a sweep: a thin adapter of a :class:`Planner`.

Tune asks for trials with ``suggest`` and reports their ends with ``on_trial_complete``; the
planner decides. ``save`` / ``restore`` let ``Tuner.restore`` resume the plan (without them it
hangs, a known Ray trap): the planner is pickled whole. Two planners sit behind it: the grid with
its follow-ups (:class:`~dcn_ray.tune.planner.RoundPlanner`) and a search
(:class:`~dcn_ray.tune.search_planner.SearchPlanner`, Tune's own searcher inside).
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from ray.tune.search import Searcher

from dcn_ray.core.scores import HEADLINE_MODE
from dcn_ray.tune.spec import METRIC, TrialSpec


class Planner(Protocol):
    """What a sweep runs next and what finished; pickled whole to save and restore it."""

    def next_trial(self, trial_id: str) -> TrialSpec | None:
        """The trial to run as ``trial_id``, or None (nothing now; :attr:`finished` says whether ever)."""

    def complete(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> None:
        """A trial ended (``result``: its last report; ``error``: it failed for good)."""

    @property
    def finished(self) -> bool:
        """Nothing queued, running or still to come."""


#: Where the classes a sweep's Tune state pickles (the planner's ``Variant``, ``FollowupConfig``...)
#: lived before the ``job/`` package: an older sweep's ``tuner.pkl`` and searcher state name them so.
OLD_MODULES = {
    f"dcn_ray.{name}": f"dcn_ray.job.{name}"
    for name in (
        "config",
        "data_config",
        "model_config",
        "train_config",
        "sweep_grid",
        "job_file",
        "strict_yaml",
        "search_config",
        "search_space",
    )
}


def accept_old_module_names() -> None:
    """Let an older sweep's pickled Tune state load: its old module names point at the moved modules."""
    for old, new in OLD_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)


class GridThenFollowups(Searcher):
    """Suggest the planner's trials; no more once it has nothing queued or running."""

    def __init__(self, planner: Planner):
        super().__init__(metric=METRIC, mode=HEADLINE_MODE)
        self.planner = planner

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        spec = self.planner.next_trial(trial_id)
        if spec is not None:
            return spec.to_config()
        return Searcher.FINISHED if self.planner.finished else None  # None: more may come

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.planner.complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.planner, handle)

    def restore(self, checkpoint_path: str) -> None:
        accept_old_module_names()
        with open(checkpoint_path, "rb") as handle:
            self.planner = pickle.load(handle)
