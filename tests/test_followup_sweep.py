"""Feature-map-guided follow-ups in a real sweep: scheduled from the reference's F1-F3, tagged in MLflow."""

from __future__ import annotations

import pytest
from conftest import small_job, sweep_on_local_ray
from mlflow.tracking import MlflowClient

from dcn_ray.core.proposals import plan_followups
from dcn_ray.kernels import BRANCHES

pytestmark = pytest.mark.integration


def test_followups_and_controls_are_derived_from_the_reference(module_ray, synthetic_stack, mlflow_server, tmp_path):
    grid = [[4, 8, 16], [2, 8, 16], [6, 8, 16]]
    raw = small_job(
        *synthetic_stack,
        name="guided",
        train={"steps": 40, "eval_every": 20, "batch_size": 4, "crop": 64},
        sweep={
            "kernels": grid,
            "resources": {"gpu": 0, "cpu": 1},
            "followup": {"enabled": True, "steps": 2, "controls": 2, "seed": 3},
        },
        tracking={"uri": mlflow_server.uri, "experiment": "guided"},
    )
    outcome = sweep_on_local_ray(raw, tmp_path)

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("guided").experiment_id
    children = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    shams = [r for r in children if r.data.tags["phase"] == "sham"]
    by_kernels = {tuple(int(k) for k in r.data.tags["kernels"].split("-")): r for r in children if r not in shams}
    reference = by_kernels[(4, 8, 16)]
    if reference.data.tags["weak_branch"] == "none":  # one seed could not tell: random one-branch changes only
        assert not shams and {r.data.tags["phase"] for r in children} <= {"grid", "random"}
        assert "none clearly weakest" in (tmp_path / "guided" / "results.md").read_text()
        return
    weak = BRANCHES.index(reference.data.tags["weak_branch"])

    # every trial logs its own branch scores
    for run in children:
        for name in BRANCHES:
            for score in ("contrast", "alone_iou", "drop", "calibrated"):
                assert f"{score}_{name}" in run.data.metrics

    # the follow-ups are exactly what the rule proposes from the reference's weak branch: its arms,
    # of which the configurations not already in the grid run as new trials
    plan = plan_followups((4, 8, 16), weak, steps=2, controls=2, seed=3)
    followups = {k: r for k, r in by_kernels.items() if r.data.tags["phase"] == "followup"}
    controls = {k: r for k, r in by_kernels.items() if r.data.tags["phase"] == "control"}
    grid_set = {tuple(k) for k in grid}
    assert set(followups) == set(plan.guided) - grid_set and len(plan.guided) >= 1
    assert set(controls) == set(plan.controls) - grid_set and len(plan.controls) == 2  # capped by the job
    assert not set(followups) & set(controls)
    assert len(children) == len(grid_set | set(plan.guided) | set(plan.controls)) + 1  # and the sham
    # the sham: the reference's kernels, the weak branch's start re-drawn, its own configuration
    (sham,) = shams
    assert sham.data.tags["config"] == f"4-8-16~sham-{BRANCHES[weak]}" and sham.data.tags["kernels"] == "4-8-16"
    assert sham.data.params["model.redraw"] == str([BRANCHES[weak]]) and sham.info.status == "FINISHED"
    for run in [*followups.values(), *controls.values()]:
        assert run.data.tags["derived_from"] == reference.info.run_id
        assert run.data.tags["weak_branch_of_reference"] == BRANCHES[weak]
        assert f"contrast_{BRANCHES[weak]}=" in run.data.tags["reference_scores"]
        assert run.info.status == "FINISHED"
    assert shams[0].data.tags["derived_from"] == reference.info.run_id

    # the report compares the guided arm with the matched controls (by mean gain), and charts it
    phases = outcome.table.column("phase").to_pylist()
    assert phases.count("followup") == len(followups) and phases.count("control") == len(controls)
    markdown = (tmp_path / "guided" / "results.md").read_text()
    assert (
        f"round 1: weak branch of 4-8-16 (lowest calibrated separation): {BRANCHES[weak]} (lowest in 1 of 1 seeds)"
        in markdown
    )
    assert "vs matched controls" in markdown and "guided minus all matched controls" in markdown
    assert "guided minus sham (kernels kept, start re-drawn)" in markdown and "4-8-16~sham-" in markdown
    assert (tmp_path / "guided" / "iou_by_config.png").stat().st_size > 1000


def test_a_sham_runs_beside_the_guided_arm_and_its_checkpoint_predicts(
    module_ray, synthetic_stack, mlflow_server, tmp_path
):
    """The weak branch fixed in advance (a replication): guided, sham and reference run at once; the sham is its
    own configuration, its checkpoint rebuilds it (predict), and the verdict reports guided minus sham."""
    from dcn_ray.core import checkpoint

    raw = small_job(
        *synthetic_stack,
        name="sham",
        train={"steps": 12, "eval_every": 6, "batch_size": 2, "crop": 32},
        sweep={
            "kernels": [[4, 8, 16]],
            "seeds": 2,
            "resources": {"gpu": 0, "cpu": 1},
            "followup": {"enabled": True, "steps": 1, "controls": 0, "weak": "F3", "relative_step": 0.5},
        },
        tracking={"uri": mlflow_server.uri, "experiment": "sham"},
    )
    outcome = sweep_on_local_ray(raw, tmp_path)
    rows = outcome.table.to_pylist()
    assert sorted((r["config"], r["phase"], r["seed"]) for r in rows) == sorted(
        (config, phase, seed)
        for config, phase in (("4-8-16", "grid"), ("4-8-12", "followup"), ("4-8-16~sham-F3", "sham"))
        for seed in (0, 1)
    )
    assert all(r["status"] == "finished" for r in rows)
    markdown = (tmp_path / "sham" / "results.md").read_text()
    assert "F3 (fixed in advance; lowest in " in markdown and "sham 4-8-16~sham-F3" in markdown
    assert "guided minus sham (kernels kept, start re-drawn): " in markdown and "over 2 seed(s)" in markdown

    client = MlflowClient(mlflow_server.uri)
    sham_run = next(r for r in rows if r["phase"] == "sham")["mlflow_run_id"]
    local = client.download_artifacts(sham_run, "checkpoint", str(tmp_path / "downloaded"))
    model, payload = checkpoint.load_model(tmp_path / "downloaded" / "checkpoint" / checkpoint.MODEL_FILE)
    assert payload["model_kwargs"]["redraw"] == ["F3"] and model.kwargs["kernels"] == [4, 8, 16] and local
