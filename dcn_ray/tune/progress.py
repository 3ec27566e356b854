"""A concise live view of a sweep's trials: one line per event, a status line every few seconds."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from ray.tune import Callback

from dcn_ray.core.scores import TEST_HEADLINE, VAL_HEADLINE
from dcn_ray.errors import first_line
from dcn_ray.tune.spec import METRIC, TrialSpec


class Progress(Callback):
    """Pending / running / finished / errored counts, the latest IoU per trial, elapsed time."""

    def __init__(self, write: Callable[[str], None], *, interval: float = 15.0):
        self.write = write
        self.interval = interval
        self.started = time.monotonic()
        self.last_summary = self.started
        self.latest: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.write(f"{self._elapsed()}  start    {_label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if VAL_HEADLINE in result:
            self.latest[trial.trial_id] = result[VAL_HEADLINE]

    def on_trial_complete(self, iteration, trials, trial, **info):
        best = (trial.last_result or {}).get(METRIC)
        test = (trial.last_result or {}).get(TEST_HEADLINE)  # scored once after training, where a test split exists
        self.write(
            f"{self._elapsed()}  finished {_label(trial)}  best val IoU {best:.4f}"
            + (f"  test IoU {test:.4f}" if test is not None else "")
            if best is not None
            else f"{self._elapsed()}  finished {_label(trial)}"
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.write(
            f"{self._elapsed()}  failed   {_label(trial)}: {_reason(trial)} (failure {trial.num_failures}; "
            "retrying from its last checkpoint)"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.write(
            f"{self._elapsed()}  errored  {_label(trial)}: {_reason(trial)} (failure {trial.num_failures}, no retry left)"
        )

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last_summary < self.interval:
            return
        self.last_summary = now
        counts = Counter(trial.status for trial in trials)
        running = [
            f"{_label(t)}: {self.latest[t.trial_id]:.3f}"
            for t in trials
            if t.status == "RUNNING" and t.trial_id in self.latest
        ]
        self.write(
            f"{self._elapsed()}  pending {counts['PENDING']}  running {counts['RUNNING']}  finished {counts['TERMINATED']}"
            f"  errored {counts['ERROR']}" + (f"  | IoU {', '.join(running)}" if running else "")
        )

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"[{seconds // 60:02d}:{seconds % 60:02d}]"


def _label(trial) -> str:
    """``grid-4-8-16-s0``; ``?`` before Tune has the trial's config."""
    config = trial.config or {}
    return TrialSpec.from_config(config).name if config.get("kernels") or config.get("family") else "?"


def _reason(trial) -> str:
    """The first line of the trial's latest error (Ray's traceback stays in the trial's folder)."""
    from ray import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as handle:  # written by Tune before this callback
            error = cloudpickle.load(handle)
    except Exception:  # no pickled error (or an unreadable one): say where to look
        return "see error.txt in the trial's folder"
    cause = getattr(error, "cause", None)  # RayTaskError: the trial's own exception
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {first_line(cause, 160)}"
    return first_line(error, 160)
