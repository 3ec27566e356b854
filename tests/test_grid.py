"""``sweep.grid``: a grid over any job key, crossed with kernels (DCN only) and seeds (no Ray, no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcn_ray.errors import InputError
from dcn_ray.job.config import job_from_dict
from dcn_ray.job.job_file import load_job
from dcn_ray.job.sweep_grid import parent_params, trial_job, variants
from dcn_ray.results.summary import configuration_results
from dcn_ray.tune.checks import planned_trials
from dcn_ray.tune.planner import RoundPlanner
from dcn_ray.tune.spec import TrialSpec

REPO = Path(__file__).resolve().parents[1]


def job(**sweep):
    raw = {
        "name": "g",
        "data": {"images": "/nowhere/i.tif", "labels": "/nowhere/l.tif"},
        "model": {"width": 8},
        "sweep": {"kernels": [[4, 8, 16], [2, 8, 16]], "seeds": 2, **sweep},
    }
    return job_from_dict(raw)


FAMILY_GRID = {"model.family": ["dcn", "unet"], "train.lr": [0.001, 0.003]}


def test_grid_crosses_families_values_kernels_and_seeds():
    found = variants(job(grid=FAMILY_GRID))
    assert [v.name for v in found] == [
        "4-8-16_train.lr=0.001", "2-8-16_train.lr=0.001", "4-8-16_train.lr=0.003", "2-8-16_train.lr=0.003",
        "unet_train.lr=0.001", "unet_train.lr=0.003",
    ]  # fmt: skip
    assert {v.family for v in found} == {"dcn", "unet"} and found[-1].kernels is None
    planner = RoundPlanner(found, (0, 1), job(grid=FAMILY_GRID).sweep.followup)
    names = [spec.name for spec in planner.queue]
    assert len(names) == 12 == len(set(names))
    assert names[0] == "grid-4-8-16_train.lr=0.001-s0" and names[-1] == "grid-unet_train.lr=0.003-s1"
    assert len({spec.key for spec in planner.queue}) == 12


def test_without_a_grid_the_trials_are_those_of_before():
    plain = job()
    planner = RoundPlanner(variants(plain), plain.seeds, plain.sweep.followup)
    before = RoundPlanner([(4, 8, 16), (2, 8, 16)], plain.seeds, plain.sweep.followup)
    assert planner.queue == before.queue
    assert [s.name for s in planner.queue] == ["grid-4-8-16-s0", "grid-4-8-16-s1", "grid-2-8-16-s0", "grid-2-8-16-s1"]
    assert planner.queue[0].tags()["config"] == "4-8-16" and planner.queue[0].params()["k1"] == 4


def test_the_trial_identity_carries_the_values_to_tune_mlflow_and_the_job():
    spec = TrialSpec.of(
        None, seed=1, family="unet", grid_values=(("train.lr", 0.003), ("model.branch_noise", [0, 0, 0]))
    )
    assert TrialSpec.from_config(spec.to_config()) == spec
    assert spec.to_config()["k1"] is None and spec.tags()["config"] == "unet_train.lr=0.003_model.branch_noise=0-0-0"
    params = spec.params()
    assert params["train.lr"] == 0.003 and params["model.family"] == "unet" and "k1" not in params
    trained = trial_job(job(grid=FAMILY_GRID), spec.family, spec.grid_values, spec.seed)
    assert (trained.model.family, trained.train.lr, trained.train.seed, trained.sweep.grid) == ("unet", 0.003, 1, {})
    with pytest.raises(ValueError, match="a unet trial has no kernels"):
        TrialSpec.of((4, 8, 16), family="unet")


def test_the_parent_run_leaves_each_varied_key_to_its_trials():
    """The parent run's params hold the job's settings, not one trial's value of a key the trials vary."""
    grid_job = job(grid=FAMILY_GRID)
    params = parent_params(grid_job, variants(grid_job))
    assert not {"model.kernels", "model.family", "train.lr"} & set(params)
    assert params["train.steps"] == grid_job.train.steps and params["sweep.kernels"] == [[4, 8, 16], [2, 8, 16]]
    one_family = job(grid={"train.lr": [0.001, 0.003]})
    assert parent_params(one_family, variants(one_family))["model.family"] == "dcn"
    search = job(search={"algorithm": "random", "trials": 4, "space": {"train.crop": {"choice": [64, 128]}}})
    assert "train.crop" not in parent_params(search, variants(search))
    assert "train.lr" in parent_params(search, variants(search))


def test_results_group_by_the_full_configuration():
    rows = [
        {"k1": 4, "k2": 8, "k3": 16, "config": name, "seed": seed, "phase": "grid", "status": "finished", "s": score}
        for name, scores in (("4-8-16_train.lr=0.001", (0.8, 0.82)), ("4-8-16_train.lr=0.003", (0.7, 0.72)))
        for seed, score in enumerate(scores)
    ]
    rows += [
        {"k1": None, "k2": None, "k3": None, "config": "unet_train.lr=0.001", "seed": s, "phase": "grid",
         "status": "finished", "s": 0.9}
        for s in (0, 1)
    ]  # fmt: skip
    results = configuration_results(rows, "s", (4, 8, 16))
    assert [r.label for r in results] == ["4-8-16_train.lr=0.001", "4-8-16_train.lr=0.003", "unet_train.lr=0.001"]
    assert [r.score.n for r in results] == [2, 2, 2] and results[0].score.mean == pytest.approx(0.81)


def test_the_report_tables_and_charts_a_family_comparison(tmp_path):
    from dcn_ray.results import report

    rows = [
        {"k1": k1, "k2": k2, "k3": k3, "config": config, "model_family": family, "seed": seed, "round": 0,
         "phase": "grid", "status": "finished", "best_val_iou": score + 0.01 * seed, "weak_branch": weak,
         "mlflow_run_id": f"{config}-{seed}", "trial_id": f"t-{config}-{seed}"}
        for k1, k2, k3, config, family, score, weak in (
            (None, None, None, "unet", "unet", 0.9, None), (4, 8, 16, "4-8-16", "dcn", 0.8, "F3"),
        )
        for seed in (0, 1, 2)
    ]  # fmt: skip
    table = report.results_table(rows)
    assert table.column("config").to_pylist() == ["4-8-16"] * 3 + ["unet"] * 3  # the reference first
    text = report.markdown(table)
    assert "| unet | grid | 3 |" in text and "| 4, 8, 16 | grid | 3 |" in text
    assert all(path.exists() for path in report.write(table, tmp_path))
    unet = next(r for r in report.statistics(table) if r.config == "unet")
    assert unet.difference is not None and unet.difference.mean == pytest.approx(0.1)


def test_a_grid_compares_its_configurations_with_the_first_at_the_reference_kernels(tmp_path):
    """No configuration is the kernels alone: the reference is the first with them (the families
    grid's DCN), and every other configuration gets its paired difference, in the table and the text."""
    from dcn_ray.results import report

    rows = [
        {"k1": k1, "k2": k2, "k3": k3, "config": config, "model_family": family, "seed": seed, "round": 0,
         "phase": "grid", "status": "finished", "best_val_iou": score + 0.01 * seed,
         "mlflow_run_id": f"{config}-{seed}", "trial_id": f"t-{config}-{seed}"}
        for k1, k2, k3, config, family, score in (
            (None, None, None, "unet_model.width=6", "unet", 0.85),
            (4, 8, 16, "4-8-16_model.width=8", "dcn", 0.8),
            (2, 8, 16, "2-8-16_model.width=8", "dcn", 0.75),
        )
        for seed in (0, 1, 2)
    ]  # fmt: skip
    table = report.results_table(rows)
    by_config = dict(zip(table.column("config").to_pylist(), table.column("vs_reference").to_pylist()))
    assert by_config["4-8-16_model.width=8"] == 0.0
    assert by_config["unet_model.width=6"] == pytest.approx(0.05)
    results = {r.config: r for r in report.statistics(table)}
    assert [c for c, r in results.items() if r.reference] == ["4-8-16_model.width=8"]
    assert results["unet_model.width=6"].difference.mean == pytest.approx(0.05)
    assert results["2-8-16_model.width=8"].difference.mean == pytest.approx(-0.05)
    assert "vs 4-8-16_model.width=8 (paired by seed)" in report.markdown(table)
    assert all(path.exists() for path in report.write(table, tmp_path))


def test_dry_run_lists_every_configuration_and_the_trial_count():
    lines = planned_trials(job(grid=FAMILY_GRID))
    assert len(lines) == 7 and lines[-1] == "12 grid trials: 6 configuration(s) x 2 seed(s)"
    assert "model.family=unet train.lr=0.001  seeds 0,1" in lines[4]
    assert "k1=2 k2=8 k3=16 train.lr=0.003" in lines[3]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"train.lrr": [1]}}, "sweep.grid: unknown job key 'train.lrr'"),
        ({"grid": {"train.seed": [1, 2]}}, "train.seed cannot be varied in a grid .use sweep.seeds."),
        ({"grid": {"sweep.kernels": [[4, 8, 16]]}}, "sweep.kernels cannot be varied"),
        ({"grid": {"train.lr": []}}, "sweep.grid.train.lr must list at least one value"),
        ({"grid": {"train.lr": [0.1, 0.1]}}, "lists a value twice"),
        ({"grid": {"train.lr": [0.1, -1]}}, r"sweep.grid \(train.lr=-1\): train.lr must be a finite number > 0"),
        ({"grid": {"model.family": ["dcn", "vit"]}}, "model.family must be one of dcn, unet, got 'vit'"),
        ({"grid": {"train.lr": 0.1}}, "sweep.grid must map job keys to lists of values"),
        (
            {"grid": {"model.family": ["dcn", "unet"]}, "followup": {"enabled": True}},
            "sweep.followup.enabled cannot be combined with sweep.grid",
        ),
        ({"grid": {"model.family,model.width": [["dcn", 8], ["unet"]]}}, "each value must be a list of 2"),
        ({"grid": {"model.family,model.width": ["dcn", "unet"]}}, "each value must be a list of 2"),
        ({"grid": {"model.width": [4, 8], "model.family,model.width": [["dcn", 8]]}}, "model.width is varied twice"),
        ({"grid": {"model.family,train.seed": [["dcn", 1]]}}, "train.seed cannot be varied"),
        ({"grid": {"model.family,model.widht": [["dcn", 1]]}}, "unknown job key 'model.widht'"),
        ({"grid": {"model.family,model.width": [["unet", 0]]}}, r"\(model.family=unet, model.width=0\): model.width"),
    ],
)
def test_bad_grids_are_refused_with_one_line(sweep, message):
    with pytest.raises(InputError, match=message) as raised:
        variants(job(**sweep))
    assert "\n" not in str(raised.value)


def test_a_grid_reaches_sections_the_job_sets():
    raw = {"data": {"images": "i.tif", "labels": "l.tif", "synthetic": {"slices": 4, "size": 64}}}
    raw["sweep"] = {"grid": {"data.synthetic.size": [64, 96], "model.width": [4, 8]}}
    found = variants(job_from_dict(raw))
    assert [v.name for v in found][:2] == [
        "4-8-16_data.synthetic.size=64_model.width=4",
        "4-8-16_data.synthetic.size=64_model.width=8",
    ]
    assert trial_job(job_from_dict(raw), "dcn", found[-1].params, 0).data.synthetic.size == 96


def test_linked_keys_vary_together_not_crossed():
    """A DCN of width 8 beside a U-Net of width 6 (matched parameter counts), each at two rates."""
    found = variants(job(grid={"model.family,model.width": [["dcn", 8], ["unet", 6]], "train.lr": [0.001, 0.003]}))
    assert [v.name for v in found] == [
        "4-8-16_model.width=8_train.lr=0.001",
        "2-8-16_model.width=8_train.lr=0.001",
        "4-8-16_model.width=8_train.lr=0.003",
        "2-8-16_model.width=8_train.lr=0.003",
        "unet_model.width=6_train.lr=0.001",
        "unet_model.width=6_train.lr=0.003",
    ]
    unet = trial_job(job(), "unet", found[-1].params, 3)
    assert (unet.model.family, unet.model.width, unet.train.lr, unet.train.seed) == ("unet", 6, 0.003, 3)
    from dcn_ray.track.runs import param_key  # the parent run logs the axis under a name MLflow accepts

    assert param_key("sweep.grid.model.family,model.width") == "sweep.grid.model.family/model.width"
    families = load_job(REPO / "jobs" / "isbi2012-families.yaml")
    assert {v.family: dict(v.params)["model.width"] for v in variants(families)} == {"dcn": 8, "unet": 6}


def test_follow_ups_need_the_dcn():
    raw = {"data": {"images": "i.tif", "labels": "l.tif"}, "model": {"family": "unet"}}
    raw["sweep"] = {"followup": {"enabled": True}}
    with pytest.raises(InputError, match="sweep.followup.enabled needs the DCN's branches F1-F3; model.family is unet"):
        variants(job_from_dict(raw))


@pytest.mark.integration
def test_a_family_by_rate_grid_runs_resumes_after_a_killed_driver_and_reports_per_configuration(
    synthetic_stack, empty_store, tmp_path
):
    """(model.family, model.width) linked x train.lr: the driver is killed once a trial finished; resume finishes the rest,
    reruns nothing finished, and each configuration has its child run, params and row."""

    from conftest import child_runs, small_job, sqlite_copy
    from mlflow.tracking import MlflowClient
    from processes import SweepDriver, resume

    uri = sqlite_copy(empty_store, tmp_path)
    raw = small_job(
        *synthetic_stack,
        name="families",
        train={"steps": 60, "eval_every": 30, "batch_size": 4, "crop": 32, "threads": 1},
        sweep={
            "kernels": [[4, 8, 16]],
            "resources": {"gpu": 0, "cpu": 1},
            "grid": {"model.family,model.width": [["dcn", 4], ["unet", 6]], "train.lr": [0.001, 0.003]},
        },
        tracking={"uri": uri, "experiment": "families"},
    )
    raw["model"] = {"width": 4, "depth": 2}
    storage = tmp_path / "runs"

    def children():
        return {r.data.tags["config"]: r for r in child_runs(uri, "families")}

    with SweepDriver(raw, tmp_path, storage) as driver:
        driver.kill_once(lambda: any(r.info.status == "FINISHED" for r in children().values()), "trial finished")
    finished = {name: run.info.end_time for name, run in children().items() if run.info.status == "FINISHED"}
    resumed = resume("families", storage, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    runs = children()
    names = {
        f"{family}_model.width={width}_train.lr={lr}"
        for family, width in (("4-8-16", 4), ("unet", 6))
        for lr in ("0.001", "0.003")
    }
    assert set(runs) == names and all(r.info.status == "FINISHED" for r in runs.values())
    for name, end_time in finished.items():
        assert runs[name].info.end_time == end_time, f"{name} finished before the kill and was run again"
    unet = runs["unet_model.width=6_train.lr=0.003"]
    assert unet.data.tags["weak_branch"] == "not applicable (unet)" and "calibrated_F1" not in unet.data.metrics
    assert unet.data.params["model.family"] == "unet" and "k1" not in unet.data.params
    assert (unet.data.params["train.lr"], unet.data.params["model.width"]) == ("0.003", "6")
    for run in runs.values():  # train.preset auto, decided by the dense synthetic foreground, logged as trained
        assert (run.data.params["train.preset"], run.data.params["train.loss"]) == ("paper", "ce")
    assert "calibrated_F1" in runs["4-8-16_model.width=4_train.lr=0.001"].data.metrics
    parent = MlflowClient(uri).get_run(unet.data.tags["mlflow.parentRunId"])  # the linked axis, as MLflow allows
    assert "sweep.grid.model.family/model.width" in parent.data.params
    results = (storage / "families" / "results.md").read_text()
    assert results.count("| finished |") == 4 and all(name in results for name in names)
