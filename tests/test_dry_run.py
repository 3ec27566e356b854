"""`sweep --dry-run` on a machine without GPUs: the trials as they will run, and how long they take."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, run_cli

from dcn_ray.job.config import job_from_dict
from dcn_ray.job.job_file import load_job
from dcn_ray.tune.checks import cpu_estimate, planned_trials


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the listing on a machine without GPUs")
def test_dry_run_on_cpu_lists_cpu_trials_and_a_time_estimate(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, ["sweep", REPO / "jobs" / "smoke.yaml", "--dry-run"])
    assert code == 0, err
    grid = [line for line in out.splitlines() if line.startswith("grid")]
    assert len(grid) == 4 and all(line.endswith("gpu=0 cpu=1") for line in grid)
    assert "estimate on CPU: about " in err and "for the 4 grid trials 2 at a time" in err


def test_cpu_estimate_grows_with_width_crop_steps_and_trials():
    job = load_job(REPO / "jobs" / "smoke.yaml", [])
    raw = job.to_dict()
    wide = job_from_dict({**raw, "model": {**raw["model"], "width": 64}, "train": {**raw["train"], "crop": 128}})

    def seconds(text: str) -> float:
        value, unit = text.split("about ")[1].split(" per trial")[0].split()
        return float(value) * {"s": 1, "min": 60, "h": 3600, "days": 86400}[unit]

    assert seconds(cpu_estimate(wide, 2, load=0)) > 5 * seconds(cpu_estimate(job, 2, load=0))
    assert "for the 4 grid trials 1 at a time" in cpu_estimate(job, 1)
    # What it measured and on what load: a loaded machine scales the estimate and says by how much
    idle, busy = cpu_estimate(wide, 2, load=0.0, cpus=2), cpu_estimate(wide, 2, load=6.0, cpus=2)
    assert "on 2 idle cores" in idle and "load average 0.0 on 2 CPU(s)" in idle and "for the load" not in idle
    assert "load average 6.0 on 2 CPU(s), x4.0 for the load" in busy
    assert seconds(busy) == pytest.approx(4 * seconds(idle), rel=0.1)
    assert planned_trials(job)[0].endswith("gpu=0.25 cpu=1")  # without a machine: what the job asks for
