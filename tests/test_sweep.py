"""`dcn-ray sweep` for real: a local Ray with declared logical GPUs, a real MLflow server."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from conftest import small_job
from mlflow.tracking import MlflowClient

from dcn_ray.cli import main
from dcn_ray.core import scores
from dcn_ray.io.tiff import read_labels
from dcn_ray.job.config import job_from_dict
from dcn_ray.results.report import TEST_COLUMNS
from dcn_ray.tune.sweep import run_sweep

pytestmark = pytest.mark.integration


@pytest.fixture
def local_ray(request):
    """A real local Ray declaring ``request.param`` logical GPUs (scheduling is real, compute is CPU)."""
    ray.init(num_cpus=2, num_gpus=request.param, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def sweep_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def overlapping(children):
    return [
        (a, b)
        for a, b in itertools.combinations(children, 2)
        if a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    ]


@pytest.mark.parametrize("local_ray", [2], indirect=True)
def test_sweep_tracks_one_child_run_per_configuration(local_ray, synthetic_stack, mlflow_server, tmp_path):
    raw = small_job(*synthetic_stack, name="grid4", tracking={"uri": mlflow_server.uri, "experiment": "grid4"})
    raw["data"]["split"] = {"train": "0:6", "val": "7:9", "test": "10:12"}  # z-blocked, one-slice gaps
    job = job_from_dict(raw)
    lines: list[str] = []
    outcome = run_sweep(
        job, job_text=yaml.safe_dump(raw), storage=str(tmp_path / "runs"), address=None, write=lines.append
    )

    assert not outcome.interrupted and outcome.errored == 0
    client, parents, children = sweep_runs(mlflow_server.uri, "grid4")
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    expected = {"4-8-16", "2-8-16", "6-8-16", "4-8-12"}
    assert sorted(r.data.tags["kernels"] for r in children) == sorted(expected)
    for run in children:
        k1, k2, k3 = (run.data.params[k] for k in ("k1", "k2", "k3"))
        assert f"{k1}-{k2}-{k3}" == run.data.tags["kernels"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["phase"] == "grid" and run.data.tags["tune_trial_id"]
        assert run.data.tags["ray_node_id"] and run.data.tags["host"]
        history = client.get_metric_history(run.info.run_id, "val_iou")
        assert [m.step for m in history] == [6, 12]
        for key in ("val_dice", "val_pixel_error", "val_vrand", "val_vinfo", "train_loss", "contrast_F1", "drop_F3"):
            assert key in run.data.metrics
        # the test split: scored once, after training, with the chosen checkpoint
        target = "objects" if "test_object_f1" in run.data.metrics else "cells"
        own = {f"test_{key}" for key in scores.keys_of(target)}
        assert {key for key in TEST_COLUMNS if key in run.data.metrics} == own
        fractions = {f"test_{s.key}" for s in scores.SCORES if s.higher_is_better is not None}
        assert all(0.0 <= run.data.metrics[key] <= 1.0 for key in own & fractions)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_iou")] == [12]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
        images = [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "feature_maps")]
        assert all(any(branch in name for name in images) for branch in ("F1", "F2", "F3"))
        assert "prediction_overlay.png" in images

    # trials that ran at the same time held different GPUs
    pairs = overlapping(children)
    assert pairs, "with 2 CPU slots some trials must have run at the same time"
    for a, b in pairs:
        assert a.data.tags["cuda_visible_devices"] != b.data.tags["cuda_visible_devices"]
    assert {r.data.tags["cuda_visible_devices"] for r in children} <= {"0", "1"}

    # results: a Table-1-like table of test scores beside the baselines, in storage and on the parent run
    rows = {row["mlflow_run_id"]: row for row in outcome.table.to_pylist()}
    for run in children:
        assert rows[run.info.run_id]["test_iou"] == pytest.approx(run.data.metrics["test_iou"])
        assert rows[run.info.run_id]["best_val_iou"] == pytest.approx(run.data.metrics["best_val_iou"])
    floor = float(np.mean(read_labels(synthetic_stack[1], 255)[10:12]))  # all-foreground IoU = interior share
    assert "| k1, k2, k3 | seed | phase | status | test IoU | vs reference |" in outcome.markdown
    assert "Scores on the test split (2 slices: 10-11)" in outcome.markdown
    assert f"all-foreground IoU {floor:.4f}" in outcome.markdown
    assert parents[0].data.metrics["baseline_all_foreground_iou"] == pytest.approx(floor)
    assert parents[0].data.tags["reported_split"] == "test"
    assert (Path(outcome.folder) / "results.parquet").is_file()
    assert (Path(outcome.folder) / "results.md").read_text().count("| 0 | grid | finished |") == 4  # one row per trial
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id, "results")}
    assert {"results/results.parquet", "results/results.md", "results/iou_by_config.png"} <= parent_files
    assert not [f for f in parent_files if f.endswith((".pkl", ".json"))]  # no Tune state (tuner.pkl, ...)
    assert any("job.yaml" == a.path for a in client.list_artifacts(parents[0].info.run_id))
    assert set(parents[0].data.params) <= set(children[0].data.params)  # one runs-view column per setting
    # a key the trials vary is each child's own: the parent says what varies (sweep.kernels), not one value
    assert "model.kernels" not in parents[0].data.params and "sweep.kernels" in parents[0].data.params
    assert len({r.data.params["model.kernels"] for r in children}) > 1


@pytest.mark.parametrize("local_ray", [1], indirect=True)
def test_gpu_fractions_pack_two_trials_on_one_gpu(local_ray, synthetic_stack, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default embedded store: ./mlflow.db
    raw = small_job(
        *synthetic_stack,
        name="packed",
        sweep={"kernels": [[4, 8, 16], [2, 8, 16]], "resources": {"gpu": 0.5, "cpu": 1}},
        train={"steps": 30, "eval_every": 15},
    )
    outcome = run_sweep(
        job_from_dict(raw), job_text=yaml.safe_dump(raw), storage=None, address=None, write=lambda line: None
    )

    assert outcome.errored == 0
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "dcn-ray-runs" / "packed").is_dir()
    _, _, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "packed")
    assert len(children) == 2
    assert overlapping(children), "two 0.5-GPU trials fit one GPU at the same time"
    assert [r.data.tags["cuda_visible_devices"] for r in children] == ["0", "0"]

    # `dcn-ray report NAME` prints the table again, from the default storage
    capsys.readouterr()
    main(["report", "packed"])
    table = capsys.readouterr().out
    assert "| 4, 8, 16 | 0 | grid | finished |" in table and "| 2, 8, 16 | 0 | grid | finished |" in table
    assert "Scores on the validation split (2 slices: 10-11): no test split" in table


ISBI = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "isbi2012"


@pytest.mark.skipif(not (ISBI / "train-volume.tif").exists(), reason="ISBI 2012 is not beside the repository")
def test_table1_dry_run_lists_exactly_the_paper_grid(capsys):
    main(["sweep", str(Path(__file__).resolve().parent.parent / "jobs" / "table1.yaml"), "--dry-run"])
    captured = capsys.readouterr()
    lines = [line.split() for line in captured.out.splitlines() if line.startswith("grid")]
    assert [line[1] for line in lines] == [
        "4-8-16",
        "4-8-10",
        "4-8-12",
        "4-8-14",
        "2-8-16",
        "6-8-16",
        "4-6-16",
        "4-10-16",
        "4-8-18",
        "4-8-20",
        "2-4-10",
        "2-4-20",
        "2-8-20",
        "4-10-18",
        "2-6-16",
        "2-8-18",
    ]
    assert "20 training and 3 validation slices of 512 x 512, 5 test slices" in captured.err
