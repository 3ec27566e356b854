"""Real dcn-ray sweeps for the benchmarks: a job file written for them, `dcn-ray sweep` run time-boxed, each
trial's evaluations read back from Tune's ``result.json`` files.

The sweep runs as a user runs it (the CLI, a local Ray, a local MLflow SQLite store), so a benchmark through it
measures what a user's sweep gets, Tune's scheduling of GPU fractions included. Used by bench/packing.py
(``--sweep``) and bench/gpu_check.py (the Table 1 step).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import yaml

#: Rows of a trial's evaluations keep these keys (and every val_* / test_* score).
ROW_KEYS = ("step", "train_loss", "images_per_s", "elapsed_s", "timestamp", "time_total_s")


def write_job(
    path: Path,
    *,
    name: str,
    images: Path,
    labels: Path,
    kernels: Sequence[Sequence[int]],
    seeds: int,
    width: int,
    crop: int,
    batch: int,
    steps: int,
    eval_every: int,
    gpu: float,
    cpu: float,
    roi: Sequence[int] | None = None,
) -> Path:
    """A Table 1 style job (ISBI 2012 splits, the paper's training) on ``images`` / ``labels``."""
    job: dict[str, Any] = {
        "name": name,
        "data": {
            "images": str(Path(images).resolve()),
            "labels": str(Path(labels).resolve()),
            "foreground": 255,
            "split": {"train": "0:20", "val": "21:24", "test": "25:30"},
            **({"roi": list(roi)} if roi else {}),
        },
        "model": {"width": width, "batch_norm": True},
        "train": {
            "preset": "paper",
            "steps": steps,
            "batch_size": batch,
            "crop": crop,
            "lr": 0.001,
            "eval_every": eval_every,
        },
        "sweep": {
            "seeds": seeds,
            "kernels": [list(k) for k in kernels],
            "resources": {"gpu": gpu, "cpu": cpu},
            "max_failures": 0,
            "followup": {"enabled": False},
        },
        "tracking": {"experiment": name},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_sweep(
    job: Path, *, storage: Path, tracking_uri: str, timeout: float, grace: float, log: Path
) -> dict[str, Any]:
    """``dcn-ray sweep JOB`` in a child process; past ``timeout`` seconds it is interrupted as Ctrl-C would
    (the sweep then writes what finished), and killed ``grace`` seconds later. It stays in this process's
    group, so a ``timeout`` around the caller ends it too. Returns rc, seconds, whether it was stopped, and the
    last lines of ``log`` when it failed."""
    command = [sys.executable, "-m", "dcn_ray", "sweep", str(job), "--storage", str(storage)]
    command += ["--tracking-uri", tracking_uri]
    started = time.perf_counter()
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        stopped = False
        try:
            rc = process.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            stopped = True
            process.send_signal(signal.SIGINT)
            try:
                rc = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                rc = process.wait()
    outcome = {"rc": rc, "seconds": time.perf_counter() - started, "stopped_at_time_limit": stopped}
    if rc:
        outcome["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
    return outcome


def trial_histories(folder: Path) -> dict[str, dict[str, Any]]:
    """Each trial of the sweep in ``folder``: its evaluations (``rows``) and its final report (``final``),
    keyed by the trial's name (``grid-4-8-16-s0``)."""
    trials: dict[str, dict[str, Any]] = {}
    for result in sorted(Path(folder).glob("*/result.json")):
        rows, final = [], None
        for line in result.read_text().splitlines():
            try:
                report = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            kept = {k: v for k, v in report.items() if k in ROW_KEYS or k.startswith(("val_", "test_", "best_"))}
            if report.get("finished"):
                final = kept
            elif "step" in report:
                rows.append(kept)
        trials[result.parent.name.rsplit("_", 1)[0]] = {"rows": rows, "final": final}
    return trials


def steady_rate(rows: list[dict[str, Any]]) -> float | None:
    """A trial's training images/s: the median over its evaluations after the first (which holds the warm-up)."""
    rates = [row["images_per_s"] for row in rows[1:] if row.get("images_per_s")]
    return median(rates) if rates else None


def overlap(trials: dict[str, dict[str, Any]]) -> float | None:
    """How much the trials' measured windows (first to last evaluation) overlap: 1 when they ran side by side
    throughout, 0 when one after the other; None with fewer than two measured trials."""
    windows = []
    for trial in trials.values():
        times = [row["timestamp"] for row in trial["rows"] if "timestamp" in row]
        if len(times) >= 2:
            windows.append((min(times), max(times)))
    if len(windows) < 2:
        return None
    common = min(end for _, end in windows) - max(start for start, _ in windows)
    span = max(end for _, end in windows) - min(start for start, _ in windows)
    return max(common, 0) / span if span > 0 else 1.0
