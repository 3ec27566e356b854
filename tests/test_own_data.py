"""README's "Your own data" section, followed start to finish: its job file and each of its commands,
in order, on a small sparse stack (synthetic organelles, 20 slices), with training made tiny."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from dcn_ray.io.synth import write_synthetic

# Five processes, one a sweep of three trials on a local Ray: minutes on a loaded 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

#: What the test changes in the README's job: training small enough for a test (the commands stay).
TINY = {"model": {"width": 4}, "train": {"steps": 6, "crop": 32, "batch_size": 2, "eval_every": 3, "threads": 1}}


def readme_steps() -> tuple[str, list[str]]:
    """The section's job file (its heredoc) and its commands (``dcn-ray ...``, comments cut)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own data") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("```\n", section.index("```bash"))]
    job = re.search(r"cat > my-job.yaml <<'END'\n(.*?)\nEND\n", block, re.S)
    assert job is not None, "the section writes my-job.yaml with a heredoc"
    commands = [line.split("  #")[0].strip() for line in block[job.end() :].splitlines() if line.startswith("dcn-ray ")]
    return job.group(1), commands


def test_the_readme_s_own_data_commands_run_start_to_finish(tmp_path: Path) -> None:
    job_text, commands = readme_steps()
    assert [c.split()[1] for c in commands] == ["sweep", "sweep", "register", "predict", "score"]
    write_synthetic(tmp_path / "made", slices=20, size=64, seed=0, task="organelles")
    (tmp_path / "made" / "images.tif").rename(tmp_path / "stack.tif")
    (tmp_path / "made" / "labels.tif").rename(tmp_path / "labels.tif")
    job = yaml.safe_load(job_text)
    for section, values in TINY.items():
        job[section] = {**job.get(section, {}), **values}
    (tmp_path / "my-job.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    outputs = []
    for command in commands:
        args = [sys.executable, "-m", "dcn_ray", *command.split()[1:]]
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done)
    dry, sweep, register, predict, score = outputs
    assert "target: objects" in dry.stderr and "labels: 20 slices" in dry.stderr
    assert "3 grid trials" in dry.stdout
    assert "test IoU" in sweep.stdout and "models:/my-mito-model@champion" in register.stdout
    assert "object F1" in predict.stdout and "target: objects" in predict.stderr
    assert "object F1" in score.stdout and "baselines on the same 2 slices" in score.stdout
    assert (tmp_path / "prediction.tif").exists()
