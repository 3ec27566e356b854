"""A concise live view of a sweep's trials: one line per event, a status line every few seconds, and
under it one line per running trial that reported since (step / total, last validation score, time left)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from ray.tune import Callback

from dcn_ray.core.scores import TEST_HEADLINE, VAL_HEADLINE, label
from dcn_ray.errors import first_line
from dcn_ray.tune.spec import METRIC, TrialSpec


class Progress(Callback):
    """Pending / running / finished / errored counts and elapsed time; per running trial its step of its
    total, its last validation score and the training time left at its pace so far."""

    def __init__(self, write: Callable[[str], None], *, interval: float = 15.0):
        self.write = write
        self.interval = interval
        self.started = time.monotonic()
        self.last_summary = self.started
        self.latest: dict[str, float] = {}
        #: The newest result per trial not yet shown in a progress line.
        self.fresh: dict[str, dict] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.write(f"{self._elapsed()}  start    {_label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if VAL_HEADLINE in result:
            self.latest[trial.trial_id] = result[VAL_HEADLINE]
            self.fresh[trial.trial_id] = result

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
        for t in trials:  # a line per running trial with news since the last summary: no flood
            result = self.fresh.pop(t.trial_id, None)
            if t.status == "RUNNING" and result is not None:
                self.write(f"         {_label(t)}  {trial_line(result)}")

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"[{seconds // 60:02d}:{seconds % 60:02d}]"


def trial_line(result: dict) -> str:
    """``step 40/200  val IoU 0.812  about 3 min left`` from a trial's latest result."""
    step, total = int(result.get("step", 0)), result.get("steps_total")
    text = f"step {step}/{int(total)}" if total else f"step {step}"
    if VAL_HEADLINE in result:
        text += f"  {label(VAL_HEADLINE)} {result[VAL_HEADLINE]:.3f}"
    elapsed = result.get("elapsed_s")
    if total and elapsed and 0 < step < total:
        left = elapsed / step * (total - step)
        text += f"  about {_duration(left)} left"
    return text


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _label(trial) -> str:
    """``grid-4-8-16-s0``; ``?`` before Tune has the trial's config."""
    config = trial.config or {}
    return TrialSpec.from_config(config).name if TrialSpec.holds(config) else "?"


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
