"""A trial is its settings: a flat mapping of job keys, applied to the job; Tune's config holds them.

The names, MLflow params and tags stay as before (``grid-4-8-16-s0``, ``k1``-``k3``); an older
sweep's Tune config (``kernels``, ``family``, ``grid_values``) still reads back as the same trial.
No Ray, no torch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from dcn_ray.job.config import job_from_dict
from dcn_ray.job.search_config import SearchConfig
from dcn_ray.job.sweep_grid import applied, variants
from dcn_ray.tune.planner import RoundPlanner
from dcn_ray.tune.search_planner import SearchPlanner, trial_spec
from dcn_ray.tune.spec import TrialSpec


def job(**sweep):
    raw = {"name": "t", "data": {"images": "/nowhere/i.tif", "labels": "/nowhere/l.tif"}, "model": {"width": 8}}
    return job_from_dict({**raw, "sweep": sweep})


def test_tunes_config_is_the_trials_job_keys_beside_its_identity():
    spec = TrialSpec(
        {"model.family": "dcn", "model.kernels": [2, 8, 16], "train.lr": 0.003}, seed=2, phase="control", round=1
    )
    config = spec.to_config()
    assert {k: v for k, v in config.items() if "." in k} == {
        "model.family": "dcn",
        "model.kernels": [2, 8, 16],
        "train.lr": 0.003,
        "train.seed": 2,
    }
    assert (config["k1"], config["k2"], config["k3"], config["seed"], config["phase"]) == (2, 8, 16, 2, "control")
    assert spec.settings == {"model.family": "dcn", "model.kernels": (2, 8, 16), "train.lr": 0.003, "train.seed": 2}
    assert spec.name == "control-2-8-16_train.lr=0.003-s2" and spec.grid_values == (("train.lr", 0.003),)
    assert TrialSpec.from_config(config) == spec and pickle.loads(pickle.dumps(spec)) == spec
    params = spec.params()
    assert params["k1"] == 2 and params["model.kernels"] == [2, 8, 16] and params["train.lr"] == 0.003
    assert spec.tags()["config"] == "2-8-16_train.lr=0.003" and spec.tags()["kernels"] == "2-8-16"
    with pytest.raises(ValueError, match="train.seed is its seed"):
        TrialSpec({"model.family": "dcn", "train.seed": 1})
    with pytest.raises(ValueError, match="a unet trial has no kernels"):
        TrialSpec({"model.family": "unet", "model.kernels": [4, 8, 16]})


def test_an_old_sweeps_tune_config_reads_back_as_the_same_trial():
    """The config shape ``to_config`` wrote before trials were job keys: an older sweep resumes."""
    old = {
        "kernels": [4, 8, 12], "seed": 3, "phase": "followup", "round": 1, "derived_from": "r1,r2",
        "reference": [4, 8, 16], "reference_weak": "F3", "reference_scores": "contrast_F1=0.9",
        "family": "dcn", "grid_values": [], "k1": 4, "k2": 8, "k3": 12,
    }  # fmt: skip
    spec = TrialSpec.from_config(old)
    assert spec == TrialSpec.of(
        (4, 8, 12), seed=3, phase="followup", round=1, derived_from="r1,r2", reference=(4, 8, 16),
        reference_weak="F3", reference_scores="contrast_F1=0.9",
    )  # fmt: skip
    assert spec.name == "followup-4-8-12-s3" and TrialSpec.holds(old) and TrialSpec.holds(spec.to_config())
    sham = {
        "kernels": [4, 8, 16],
        "seed": 0,
        "phase": "sham",
        "family": "dcn",
        "grid_values": [["model.redraw", ["F3"]]],
    }
    assert TrialSpec.from_config(sham).name == "sham-4-8-16~sham-F3-s0"
    unet = {"kernels": None, "seed": 1, "family": "unet", "grid_values": [["train.lr", 0.001]], "k1": None}
    read = TrialSpec.from_config(unet)
    assert read.name == "grid-unet_train.lr=0.001-s1" and TrialSpec.from_config(read.to_config()) == read
    assert not TrialSpec.holds({}) and not TrialSpec.holds({"phase": "grid"})


def test_the_trials_job_is_the_job_with_its_settings_applied():
    grid = job(kernels=[[4, 8, 16], [2, 8, 16]], grid={"model.family": ["dcn", "unet"], "train.lr": [0.001, 0.003]})
    queue = RoundPlanner(variants(grid), (0, 1), grid.sweep.followup).queue
    dcn = next(spec for spec in queue if spec.name == "grid-2-8-16_train.lr=0.003-s1")
    trained = applied(grid, dcn.settings)
    assert (trained.model.family, trained.model.kernels, trained.train.lr, trained.train.seed) == (
        "dcn", (2, 8, 16), 0.003, 1
    )  # fmt: skip
    unet = applied(grid, next(spec for spec in queue if spec.family == "unet").settings)
    assert unet.model.family == "unet" and unet.sweep.grid == {} and not hasattr(unet.model, "kernels")
    plain = applied(job(), TrialSpec.of((4, 8, 12), seed=5).settings)  # kernels and seed alone
    assert (plain.model.kernels, plain.train.seed, plain.model.width) == ((4, 8, 12), 5, 8)


def test_a_search_trial_is_its_sampled_keys_in_phase_search():
    spec = trial_spec({"train.lr": 0.001, "model.kernels": (2, 8, 16)}, 0, family="dcn", kernels=(4, 8, 16))
    assert spec.name == "search-2-8-16_train.lr=0.001-s0" and spec.phase == "search"
    assert spec.settings == {"model.family": "dcn", "model.kernels": (2, 8, 16), "train.lr": 0.001, "train.seed": 0}
    default = trial_spec({"model.width": 4}, 1, family="dcn", kernels=(4, 8, 16))
    assert default.name == "search-4-8-16_model.width=4-s1" and applied(job(), default.settings).model.width == 4
    unet = trial_spec({"model.family": "unet", "model.width": 4}, 0, family="dcn", kernels=(4, 8, 16))
    assert unet.name == "search-unet_model.width=4-s0" and unet.kernels is None


def test_a_searcher_over_model_kernels_produces_trials_of_those_kernels():
    from functools import partial

    space = {"model.kernels": {"choice": [[4, 8, 16], [2, 8, 16]]}, "train.lr": {"loguniform": [1e-3, 1e-2]}}
    search = SearchConfig.from_raw({"algorithm": "random", "trials": 4, "seed": 1, "space": space})
    make = partial(trial_spec, family="dcn", kernels=(4, 8, 16))
    plan = SearchPlanner(search, (0,), make, metric="score", mode="max")
    specs = []
    while not plan.finished:
        spec = plan.next_trial(f"t{len(specs)}")
        if spec is None:
            break
        specs.append(spec)
        plan.complete(f"t{len(specs) - 1}", {"score": 0.5, "finished": 1}, False)
    assert specs and all(spec.phase == "search" and spec.kernels in {(4, 8, 16), (2, 8, 16)} for spec in specs)
    for spec in specs:
        assert spec.name.startswith(f"search-{'-'.join(map(str, spec.kernels))}_train.lr=")
        assert applied(job(), spec.settings).model.kernels == spec.kernels


def test_a_dry_run_expands_the_grid_once_and_lists_search_trials_as_such(capsys, tmp_path, monkeypatch):
    from conftest import REPO, run_cli

    from dcn_ray.job import job_file, sweep_grid
    from dcn_ray.tune import checks

    calls = []

    def counted(job):
        calls.append(job.name)
        return sweep_grid.variants(job)

    for module in (job_file, checks):  # every module that may expand a job's grid
        monkeypatch.setattr(module, "variants", counted)
    monkeypatch.chdir(tmp_path)
    grid = "sweep.grid={train.lr: [0.001, 0.003], model.kernels: [[4, 8, 16], [2, 8, 16]]}"
    one = ["--set", "sweep.kernels=[[4, 8, 16]]", "--set", "sweep.followup.enabled=false"]  # the grid's kernels
    code, out, err = run_cli(capsys, ["sweep", REPO / "jobs" / "smoke.yaml", "--dry-run", "--set", grid, *one])
    assert code == 0, err
    assert calls == ["smoke"]  # load_sweep expanded it; the checks, the estimate and the listing were handed it
    assert [line.split()[1] for line in out.splitlines() if line.startswith("grid ")] == [
        "4-8-16_train.lr=0.001", "2-8-16_train.lr=0.001", "4-8-16_train.lr=0.003", "2-8-16_train.lr=0.003"
    ]  # fmt: skip
    space = "sweep.search={algorithm: random, trials: 3, space: {model.kernels: {choice: [[4, 8, 16], [2, 8, 16]]}}}"
    code, out, err = run_cli(capsys, ["sweep", REPO / "jobs" / "smoke.yaml", "--dry-run", "--set", space, *one])
    assert code == 0, err
    assert "random search: 3 configuration(s)" in out and "  model.kernels: choice ['4-8-16', '2-8-16']" in out
    assert "trials named search-CONFIGURATION-sSEED" in out


def test_the_weak_branch_goes_by_name_from_the_trial_to_the_planner_and_the_results():
    from dcn_ray.job.config import FollowupConfig
    from dcn_ray.tune.spec import METRIC
    from dcn_ray.tune.trial import already_finished

    # a trial finished before a kill reports its MLflow metrics again: the metric's index becomes the name
    assert already_finished({METRIC: 0.8, "weak_branch": 2.0}, None)["weak_branch"] == "F3"
    assert already_finished({METRIC: 0.8, "weak_branch": -1.0}, None)["weak_branch"] == "none"

    def votes(weak):  # three seeds of the reference, F3 clearly lowest over them; their own names as given
        planner = RoundPlanner([(4, 8, 16)], (0, 1, 2), FollowupConfig(enabled=True, steps=1, seed=1))
        for seed, named in enumerate(weak):
            planner.next_trial(f"r{seed}")
            calibrated = {"calibrated_F1": 0.9, "calibrated_F2": 0.9, "calibrated_F3": 0.5 + 0.01 * seed}
            planner.complete(f"r{seed}", {METRIC: 0.8, "weak_branch": named, **calibrated}, False)
        return planner.decisions[0].votes, planner.decisions[0].agreement

    assert votes(["F3", "F3", "none"]) == votes([2, 2.0, -1]) == (("F3", "F3", "none"), "F3 (lowest in 2 of 3 seeds)")


@pytest.mark.integration
def test_a_search_over_model_kernels_trains_each_sampled_triple_in_phase_search(synthetic_stack, empty_store, tmp_path):
    """random over ``model.kernels`` on a real local Ray and MLflow store: each trial's job trains the triple
    it sampled (k1-k3 and ``model.kernels`` logged alike), named ``search-...``, reported as a configuration."""
    from conftest import child_runs, small_job, sqlite_copy, sweep_on_local_ray

    uri = sqlite_copy(empty_store, tmp_path)
    space = {"model.kernels": {"choice": [[4, 8, 16], [2, 8, 16]]}, "train.lr": {"loguniform": [1.0e-3, 1.0e-2]}}
    raw = small_job(
        *synthetic_stack,
        name="kernel-search",
        train={"steps": 4, "eval_every": 2, "batch_size": 2, "crop": 32, "threads": 1},
        sweep={
            "kernels": [[4, 8, 16]],
            "resources": {"gpu": 0, "cpu": 1},
            "search": {"algorithm": "random", "trials": 2, "seed": 0, "space": space},
        },
        tracking={"uri": uri, "experiment": "kernel-search"},
    )
    outcome = sweep_on_local_ray(raw, tmp_path / "runs")
    assert not outcome.interrupted and outcome.errored == 0
    runs = child_runs(uri, "kernel-search")
    assert 1 <= len(runs) <= 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        params, tags = run.data.params, run.data.tags
        kernels = "-".join(params[k] for k in ("k1", "k2", "k3"))
        assert params["model.kernels"] == f"[{params['k1']}, {params['k2']}, {params['k3']}]"
        assert kernels in ("4-8-16", "2-8-16") and tags["config"].startswith(f"{kernels}_train.lr=")
        assert run.info.run_name == f"search-{tags['config']}-s0" and params["phase"] == tags["phase"] == "search"
    rows = outcome.table.to_pylist()
    assert {r["phase"] for r in rows} == {"search"} and {r["status"] for r in rows} == {"finished"}
    assert f"{len(runs)} configuration(s) tried" in (Path(outcome.folder) / "search.md").read_text()


def test_a_spec_pickled_by_an_older_sweep_unpickles_as_the_same_trial():
    """An older sweep's planner state (its searcher-state pickle) holds specs with kernels, family, grid_values."""
    old_state = {
        "kernels": (4, 8, 12), "seed": 1, "phase": "followup", "round": 1, "derived_from": "r", "reference": (4, 8, 16),
        "reference_weak": "F3", "reference_scores": "", "family": "dcn", "grid_values": (),
    }  # fmt: skip
    restored = TrialSpec.__new__(TrialSpec)
    restored.__setstate__(old_state)  # what pickle does with the state it finds
    expected = TrialSpec.of((4, 8, 12), seed=1, phase="followup", round=1, derived_from="r", reference=(4, 8, 16),
                            reference_weak="F3")  # fmt: skip
    assert restored == expected and restored.name == "followup-4-8-12-s1" and hash(restored) == hash(expected)
    assert pickle.loads(pickle.dumps(expected)) == expected
