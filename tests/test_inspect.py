"""`dcn-ray inspect`: the paper's look at F1-F3 for any checkpoint, as files and a verdict."""

from __future__ import annotations

import json

import pytest
from conftest import small_job, train_job
from PIL import Image

from dcn_ray.cli import main
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.proposals import plan_followups
from dcn_ray.job.config import job_from_dict
from dcn_ray.kernels import BRANCHES, kernel_problem

pytestmark = pytest.mark.usefixtures("two_threads")


def test_inspect_writes_the_montage_and_scores_and_names_the_weak_branch(synthetic_stack, tmp_path, capsys):
    images, labels = synthetic_stack
    job = job_from_dict(small_job(images, labels, train={"steps": 30, "eval_every": 30, "batch_size": 4, "crop": 64}))
    result = train_job(job, (4, 8, 16), load_data(job.data))
    model_file = tmp_path / "model.pt"
    checkpoint.save(result.model, model_file)

    main(["inspect", str(model_file), str(images), str(tmp_path / "out")])  # returns: exit 0
    printed = capsys.readouterr().out

    record = json.loads((tmp_path / "out" / "branch_scores.json").read_text())
    assert [s["name"] for s in record["scores"]] == list(BRANCHES)
    assert record["slices"] == [10, 11], "the job's validation split, taken from the checkpoint"
    for score in record["scores"]:
        assert 0.0 <= score["contrast"] <= 1.0 and 0.0 <= score["alone_iou"] <= 1.0
    assert f"weak branch: {record['weak_branch']}" in printed
    if record["weak_branch"] == "none":  # one seed names a branch only beyond the seed spread of the rule's validation
        assert "one seed cannot tell" in printed and record["guided_followups"] == []
    else:
        weak = BRANCHES.index(record["weak_branch"])
        expected = plan_followups((4, 8, 16), weak, steps=3, controls=2, seed=0, exclude=[(4, 8, 16)])
        assert [tuple(k) for k in record["guided_followups"]] == list(expected.guided)
    assert all(kernel_problem(k) is None for k in record["guided_followups"] + record["controls"])

    montage = Image.open(tmp_path / "out" / "F1-F3_montage.png")
    assert montage.width >= 4 * 128 and montage.height >= 128, "input | F1 | F2 | F3 side by side"
    for name in BRANCHES:
        assert (tmp_path / "out" / f"{name}.png").is_file()
