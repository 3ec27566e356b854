"""sweep.search and sweep.scheduler: the section checks itself, its keys and bounds are checked against
the job, and it becomes Tune's own seeded searchers and ASHA (no sampler of dcn-ray's)."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean

import pytest

from dcn_ray.errors import InputError
from dcn_ray.job.config import job_from_dict
from dcn_ray.job.search_config import SchedulerConfig, SearchConfig
from dcn_ray.job.search_space import check_search

SPACE = {
    "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "train.foreground_crops": {"uniform": [0.0, 0.6]},
    "model.width": {"choice": [4, 8]},
    "train.loss": {"choice": ["ce", "ce_dice"]},
    "train.warmup": {"randint": [0, 5]},
}


def job(**sweep):
    return job_from_dict(
        {
            "data": {"images": "i.tif", "labels": "l.tif"},
            "model": {"width": 4},
            "train": {"steps": 12, "batch_size": 2, "crop": 32, "eval_every": 6},
            "sweep": sweep,
        }
    )


def search(**raw) -> SearchConfig:
    return SearchConfig.from_raw({"algorithm": "optuna", "trials": 8, "space": SPACE, **raw})


def test_the_section_reads_dotted_and_nested_keys_alike():
    dotted = SearchConfig.from_raw({"algorithm": "random", "trials": 3, "space": {"train.lr": {"uniform": [0.1, 1]}}})
    nested = SearchConfig.from_raw(
        {"algorithm": "random", "trials": 3, "space": {"train": {"lr": {"uniform": [0.1, 1]}}}}
    )
    assert dotted == nested
    assert dotted.distributions()["train.lr"].kind == "uniform"
    assert SearchConfig().enabled is False and search().enabled is True
    # YAML 1.1 reads 1e-3 (no dot) as text: a bound given so is a number
    assert SearchConfig.from_raw(
        {"algorithm": "random", "trials": 1, "space": {"train.lr": {"loguniform": ["1e-4", "1e-2"]}}}
    ).distributions()["train.lr"].args == (1e-4, 1e-2)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"algorithm": "bayes"}, "sweep.search.algorithm must be one of grid, random, optuna"),
        ({"trials": 0}, "sweep.search.trials must be an integer from 1"),
        ({"trials": None}, "sweep.search.trials must be an integer"),
        ({"seed": -1}, "sweep.search.seed must be an integer"),
        ({"space": {}}, "sweep.search.space must name at least one job key"),
        ({"space": {"train.lr": {"gaussian": [0, 1]}}}, "sweep.search.space.train.lr: unknown distribution 'gaussian'"),
        ({"space": {"train.lr": {"uniform": [1]}}}, "sweep.search.space.train.lr: uniform takes a list of 2 numbers"),
        ({"space": {"train.lr": {"uniform": [1, 0.1]}}}, "sweep.search.space.train.lr: uniform needs low < high"),
        ({"space": {"train.lr": {"loguniform": [0, 1]}}}, "sweep.search.space.train.lr: loguniform needs low > 0"),
        ({"space": {"train.lr": {"uniform": [0, math.inf]}}}, "uniform takes finite numbers"),
        ({"space": {"train.warmup": {"randint": [0, 2.5]}}}, "sweep.search.space.train.warmup: randint takes integers"),
        ({"space": {"train.lr": {"quniform": [0.1, 1, 0.25]}}}, "low and high must be multiples of q=0.25"),
        ({"space": {"train.lr": {"quniform": [0, 1, 0]}}}, "quniform's step q must be > 0"),
        ({"space": {"model.width": {"choice": []}}}, "sweep.search.space.model.width: choice must list at least one"),
        ({"space": {"model.width": {"choice": [4, 4]}}}, "sweep.search.space.model.width: choice lists a value twice"),
        ({"space": {"model.width": [4, 8]}}, "sweep.search.space.model.width must be one distribution"),
        ({"space": {"train.lr": {"qloguniform": [0.1, 1, 0.1]}}}, "optuna cannot quantise a log scale"),
        ({"budget": 3}, "unknown job key 'sweep.search.budget'"),
    ],
)
def test_a_bad_search_section_is_one_line_naming_its_key(raw, words):
    with pytest.raises(InputError) as caught:
        search(**raw)
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_set_adds_a_key_to_the_space_and_is_checked_like_the_file(tmp_path):
    import yaml

    from dcn_ray.job.job_file import load_job

    path = tmp_path / "job.yaml"
    raw = {
        "data": {"images": "i.tif", "labels": "l.tif"},
        "model": {"width": 4},
        "train": {"steps": 12, "batch_size": 2, "crop": 32, "eval_every": 6},
        "sweep": {"search": {"algorithm": "random", "trials": 3, "space": {"train.lr": {"uniform": [0.001, 0.01]}}}},
    }
    path.write_text(yaml.safe_dump(raw))
    job = load_job(path, ["sweep.search.space.train.foreground_crops={uniform: [0, 0.5]}"])
    assert set(job.sweep.search.distributions()) == {"train.lr", "train.foreground_crops"}
    assert load_job(path, ["sweep.search.algorithm=optuna"]).sweep.search.algorithm == "optuna"
    with pytest.raises(InputError, match="sweep.search.space.train.batch_size \\(0\\): train.batch_size"):
        load_job(path, ["sweep.search.space.train.batch_size={randint: [0, 4]}"])


def test_grid_takes_no_space_and_random_takes_quantised_logs():
    with pytest.raises(InputError, match="need sweep.search.algorithm random or optuna"):
        SearchConfig.from_raw({"space": {"train.lr": {"uniform": [0.1, 1]}}})
    quantised = {"train.lr": {"qloguniform": [0.1, 1.0, 0.1]}}
    assert SearchConfig.from_raw({"algorithm": "random", "trials": 2, "space": quantised}).enabled


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"algorithm": "hyperband"}, "sweep.scheduler.algorithm must be asha"),
        ({"algorithm": "asha", "grace_steps": 0}, "sweep.scheduler.grace_steps must be an integer >= 1"),
        ({"algorithm": "asha", "reduction_factor": 1}, "sweep.scheduler.reduction_factor must be an integer >= 2"),
        ({"algorithm": "asha", "patience": 3}, "unknown job key 'sweep.scheduler.patience'"),
    ],
)
def test_a_bad_scheduler_is_one_line(raw, words):
    with pytest.raises(InputError, match=words):
        SchedulerConfig.from_raw(raw)
    assert SchedulerConfig.from_raw(None).enabled is False
    assert SchedulerConfig.from_raw({"algorithm": "asha"}).grace_steps == 100


def test_every_key_and_bound_is_checked_against_the_job_as_a_grid_value_is():
    check_search(job(), search())  # every bound of SPACE is a value its key takes
    cases = [
        ({"train.seed": {"randint": [0, 3]}}, "train.seed cannot be searched (use sweep.seeds)"),
        ({"sweep.max_failures": {"randint": [0, 3]}}, "sweep.max_failures cannot be searched"),
        ({"train.learning_rate": {"uniform": [0.1, 1]}}, "unknown job key 'train.learning_rate'"),
        ({"train.lr": {"uniform": [-1, 1]}}, "sweep.search.space.train.lr (-1): train.lr must be a finite number > 0"),
        ({"train.loss": {"choice": ["ce", "focal"]}}, "sweep.search.space.train.loss (focal): train.loss must be"),
        # a continuous distribution samples floats: an integer key refuses it, named
        ({"train.warmup": {"uniform": [0, 5]}}, "sweep.search.space.train.warmup (0): train.warmup must be an integer"),
        # a U-Net of depth 4 needs crops of a multiple of 16: 40 is a DCN's crop, not a U-Net's
        ({"model.family": {"choice": ["dcn", "unet"]}, "train.crop": {"choice": [32, 40]}}, None),
        (
            {"train.crop": {"choice": [32, 36]}},
            "sweep.search.space.train.crop (36): train.crop must be a positive multiple of 8",
        ),
    ]
    for space, words in cases:
        candidate = SearchConfig.from_raw({"algorithm": "random", "trials": 2, "space": space})
        if words is None:
            check_search(job(), candidate)  # each bound alone is valid (the pair is the trial's own check)
            continue
        with pytest.raises(InputError) as caught:
            check_search(job(), candidate)
        assert words in str(caught.value), str(caught.value)
    with pytest.raises(InputError, match="cannot be combined with sweep.grid"):
        check_search(job(grid={"train.lr": [0.001, 0.003]}), search())
    with pytest.raises(InputError, match="cannot be combined with sweep.search"):
        check_search(job(followup={"enabled": True}), search())


def test_a_choice_of_lists_reaches_tune_as_labels_and_comes_back_as_lists():
    from dcn_ray.tune.search_algs import decode, labels, tune_space

    space = {"sweep.kernels": {"choice": [[4, 8, 16], [2, 8, 16]]}, "train.lr": {"loguniform": [1e-4, 1e-2]}}
    candidate = SearchConfig.from_raw({"algorithm": "optuna", "trials": 2, "space": space})
    kernels = candidate.distributions()["sweep.kernels"]
    assert labels(kernels) == {"4-8-16": (4, 8, 16), "2-8-16": (2, 8, 16)}
    domains = tune_space(candidate)
    assert domains["sweep.kernels"].categories == ["4-8-16", "2-8-16"]
    assert decode(candidate, {"sweep.kernels": "2-8-16", "train.lr": 0.001, "other": 1}) == {
        "sweep.kernels": (2, 8, 16),
        "train.lr": 0.001,
    }


def _suggestions(candidate: SearchConfig, count: int) -> list[dict]:
    """Drive Tune's OptunaSearch as Tune does (suggest, then complete), scoring by a known function."""
    from dcn_ray.tune.search_algs import search_algorithm

    searcher = search_algorithm(candidate, metric="score", mode="max", max_concurrent=1)
    found = []
    for index in range(count):
        config = searcher.suggest(f"t{index}")
        found.append(config)
        score = -abs(math.log10(config["train.lr"]) + 3)  # best at lr = 1e-3
        searcher.on_trial_complete(f"t{index}", {"score": score})
    return found


def test_optuna_is_tunes_searcher_with_a_seeded_tpe_and_a_concurrency_limit():
    from optuna.samplers import TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from dcn_ray.tune.search_algs import search_algorithm, startup_trials

    candidate = search(trials=12)
    searcher = search_algorithm(candidate, metric="score", mode="max", max_concurrent=2)
    assert isinstance(searcher, ConcurrencyLimiter) and isinstance(searcher.searcher, OptunaSearch)
    assert isinstance(searcher.searcher._sampler, TPESampler)
    assert [startup_trials(n) for n in (1, 6, 12, 30, 100)] == [2, 2, 4, 10, 10]
    first, again, other = _suggestions(candidate, 12), _suggestions(candidate, 12), _suggestions(search(seed=1), 12)
    assert first == again  # the same seed draws the same configurations
    assert first != other
    for config in first:
        assert 1e-4 <= config["train.lr"] <= 1e-2 and 0 <= config["train.foreground_crops"] <= 0.6
        assert config["model.width"] in (4, 8) and config["train.warmup"] in range(5)
    # TPE models after its random start: its later suggestions are nearer the optimum than its first
    start = startup_trials(12)
    distance = [abs(math.log10(c["train.lr"]) + 3) for c in first]
    assert min(distance[start:]) < 0.25


def test_random_is_tunes_seeded_basic_variant_generator_and_asha_steps_on_the_training_step():
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from dcn_ray.tune.search_algs import param_space, scheduler, search_algorithm

    candidate = search(algorithm="random")
    generator = search_algorithm(candidate, metric="score", mode="max", max_concurrent=2)
    assert isinstance(generator, BasicVariantGenerator)
    assert set(param_space(candidate)) == set(SPACE) and param_space(search()) == {}
    asha = scheduler(
        SchedulerConfig(algorithm="asha", grace_steps=100, reduction_factor=3), metric="m", mode="max", max_steps=60
    )
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "step"
    assert scheduler(SchedulerConfig(), metric="m", mode="max", max_steps=60) is None


@pytest.mark.integration
def test_tune_runs_the_budget_seeded_and_asha_stops_the_bad_trials_early(module_ray, tmp_path):
    """On a real local Ray: the random generator's draws repeat with its seed; optuna + ASHA runs the
    budget and stops trials early on the step they report."""
    from ray import tune

    from dcn_ray.tune.search_algs import param_space, scheduler, search_algorithm

    def trainable(config):
        quality = -abs(math.log10(config["train.lr"]) + 3)
        for step in range(10, 91, 10):
            tune.report({"step": step, "score": quality * (1 + 1 / step)})

    def fit(candidate: SearchConfig, asha: SchedulerConfig, name: str):
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(candidate),
            tune_config=tune.TuneConfig(
                search_alg=search_algorithm(candidate, metric="score", mode="max", max_concurrent=2),
                scheduler=scheduler(asha, metric="score", mode="max", max_steps=90),
                num_samples=candidate.trials,
                max_concurrent_trials=2,
                reuse_actors=True,  # this trainable has no state: no process start-up per trial
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0),
        )
        return tuner.fit()

    random = SearchConfig.from_raw(
        {"algorithm": "random", "trials": 3, "seed": 3, "space": {"train.lr": SPACE["train.lr"]}}
    )
    optuna = SearchConfig.from_raw(
        {"algorithm": "optuna", "trials": 6, "seed": 3, "space": {"train.lr": SPACE["train.lr"]}}
    )
    draws = [sorted(r.config["train.lr"] for r in fit(random, SchedulerConfig(), f"random{i}")) for i in (0, 1)]
    stopped = fit(optuna, SchedulerConfig(algorithm="asha", grace_steps=10, reduction_factor=3), "optuna")
    assert len(draws[0]) == 3 and draws[0] == draws[1]
    assert len(stopped) == 6 and not stopped.errors
    steps = [r.metrics["step"] for r in stopped]
    assert min(steps) < 90 and max(steps) == 90  # ASHA stopped some, let the best finish


# ----------------------------------------------------------------------------- the search planner


def planner(algorithm: str = "optuna", trials: int = 4, space=None, seeds=(0, 1)):
    from dcn_ray.tune.search_planner import SearchPlanner

    candidate = SearchConfig.from_raw(
        {"algorithm": algorithm, "trials": trials, "seed": 5, "space": space or {"train.lr": SPACE["train.lr"]}}
    )
    return SearchPlanner(candidate, seeds, _as_trial, metric="score", mode="max")


def _as_trial(values, seed):
    """A trial as the tests see it (a module function: the planner is pickled with it)."""
    return dict(values), seed


def drive(plan, until: int | None = None) -> list[tuple[dict, int]]:
    """Run the plan as Tune would (one trial at a time), scoring lr by its distance from 1e-3."""
    ran, index = [], 0
    while not plan.finished and (until is None or len(ran) < until):
        trial = plan.next_trial(f"trial{index}")
        if trial is None:  # the draws left were repeats: told at once, nothing to run
            assert plan.finished, "one trial at a time: nothing running, so the planner has one or is done"
            break
        values, seed = trial
        ran.append(trial)
        score = -abs(math.log10(values.get("train.lr", 1e-3)) + 3) + 0.001 * seed
        plan.complete(f"trial{index}", {"score": score, "finished": 1}, False)
        index += 1
    return ran


@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_each_suggested_configuration_runs_once_per_seed_and_the_budget_is_the_total(algorithm):
    plan = planner(algorithm, trials=4)
    ran = drive(plan)
    assert plan.finished and plan.suggested == 4 and len(plan.configurations) == 4
    assert len(ran) == 8 and sorted(seed for _, seed in ran) == [0] * 4 + [1] * 4
    for configuration in plan.configurations.values():
        assert sorted(configuration.results) == [0, 1] and configuration.waiting == []
    assert plan.next_trial("late") is None


def test_the_searcher_is_told_the_seed_mean():
    plan = planner("optuna", trials=2)
    drive(plan)
    study = plan.searcher.searcher._ot_study
    told = sorted(t.value for t in study.trials)
    expected = sorted(c.mean() for c in plan.configurations.values())
    assert told == pytest.approx(expected)
    assert all(c.mean() == pytest.approx(fmean(c.results.values())) for c in plan.configurations.values())


def test_a_configuration_drawn_again_is_told_its_result_and_never_rerun():
    plan = planner("random", trials=8, space={"model.width": {"choice": [4, 8]}})
    ran = drive(plan)
    assert plan.suggested == 8 and len(plan.configurations) == 2  # 8 draws of two values: repeats
    assert sorted((v["model.width"], s) for v, s in ran) == [(4, 0), (4, 1), (8, 0), (8, 1)]


def test_draws_differing_only_in_kernels_a_family_ignores_are_one_configuration():
    space = {"model.family": {"choice": ["unet"]}, "model.kernels": {"choice": [[4, 8, 16], [2, 8, 16]]}}
    plan = planner("random", trials=6, space=space)
    ran = drive(plan)
    assert plan.suggested == 6 and list(plan.configurations) == ["model.family=unet"]
    assert sorted(seed for _, seed in ran) == [0, 1] and all("model.kernels" not in v for v, _ in ran)


def test_a_restored_planner_continues_the_same_search_without_repeating_or_losing_a_trial():
    import pickle

    plan = planner("optuna", trials=5)
    first = drive(plan, until=4)  # two configurations done, as a killed driver left them
    restored = pickle.loads(pickle.dumps(plan))
    rest_original, rest_restored = drive(plan), drive(restored)
    assert rest_original == rest_restored  # the searcher's random state came back with it
    names = [tuple(sorted(v.items())) for v, _ in first + rest_restored]
    assert len(names) == 10 and len(set(names)) == 5 and restored.suggested == 5


def test_an_asha_stop_is_recorded_and_still_told():
    plan = planner("optuna", trials=1, seeds=(0,))
    values, seed = plan.next_trial("t0")
    plan.complete("t0", {"score": 0.5, "step": 100}, False)  # no "finished": ASHA stopped it at step 100
    (configuration,) = plan.configurations.values()
    assert configuration.stopped == {0} and configuration.mean() == 0.5 and plan.finished


def test_the_dry_run_lists_the_space_and_the_budget():
    lines = planner("optuna", trials=12, space=SPACE).describe()
    assert lines[0].startswith("optuna search: 12 configuration(s) x 2 seed(s) = 24 trials at most (seed 5)")
    assert "TPE models after 4 random configurations" in lines[0]
    assert "  train.lr: loguniform ['0.0001', '0.01']" in lines and "  model.width: choice ['4', '8']" in lines


@pytest.mark.integration
def test_an_optuna_search_with_asha_runs_its_budget_resumes_after_a_killed_driver_and_logs_each_trial(
    synthetic_stack, empty_store, tmp_path
):
    """optuna + ASHA over keys of two sections, two seeds: the driver is killed once a trial finished;
    `dcn-ray resume` finishes the search: no configuration twice, the total is the budget, each trial
    one child run with its sampled values as params, ASHA's stops tagged with their step and listed."""
    import subprocess
    import sys

    from conftest import child_runs, small_job, sqlite_copy
    from mlflow.tracking import MlflowClient
    from processes import SweepDriver, resume

    uri = sqlite_copy(empty_store, tmp_path)
    raw = small_job(
        *synthetic_stack,
        name="search",
        train={"steps": 24, "eval_every": 6, "batch_size": 2, "crop": 32, "threads": 1},
        sweep={
            "kernels": [[4, 8, 16]],
            "seeds": 2,
            "resources": {"gpu": 0, "cpu": 1},
            "search": {
                "algorithm": "optuna",
                "trials": 4,
                "seed": 1,
                "space": {"train.lr": {"loguniform": [1.0e-4, 3.0e-2]}, "model.width": {"choice": [2, 4]}},
            },
            "scheduler": {"algorithm": "asha", "grace_steps": 6, "reduction_factor": 3},
        },
        tracking={"uri": uri, "experiment": "search"},
    )
    storage = tmp_path / "runs"

    def children():
        return child_runs(uri, "search")

    with SweepDriver(raw, tmp_path, storage) as driver:
        driver.kill_once(lambda: any(r.info.status == "FINISHED" for r in children()), "trial finished")
    resumed = resume("search", storage, tmp_path, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    runs = children()
    by_config: dict[str, list] = {}
    for run in runs:
        by_config.setdefault(run.data.tags["config"], []).append(run)
    assert 1 <= len(by_config) <= 4  # the budget: 4 suggestions (a repeat is told, not rerun)
    for config, group in by_config.items():
        assert sorted(r.data.params["seed"] for r in group) == ["0", "1"], f"{config} ran a seed twice or lost one"
        for run in group:
            assert run.info.status == "FINISHED"
            lr, width = float(run.data.params["train.lr"]), int(run.data.params["model.width"])
            assert 1e-4 <= lr <= 3e-2 and width in (2, 4) and f"model.width={width}" in config
    stopped = [r for r in runs if "stopped_early" in r.data.tags]
    assert stopped, "ASHA stopped no trial"
    for run in stopped:
        assert run.data.tags["stopped_early"] == "asha" and int(run.data.tags["stopped_at_step"]) < 24
        assert "test_iou" not in run.data.metrics
        kept = [a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "checkpoint")]
        assert kept == ["checkpoint/model.pt"], "a stopped trial keeps the best checkpoint it reached"
    experiment = MlflowClient(uri).get_experiment_by_name("search")
    (view,) = [v for k, v in experiment.tags.items() if k.startswith("mlflow.sharedViewState.")]
    assert "train.lr" in view and "model.width" in view  # the sampled keys are columns of the shared view
    search_md = (storage / "search" / "search.md").read_text()
    assert f"{len(by_config)} configuration(s) tried" in search_md and (storage / "search" / "best_so_far.png").exists()
    report = subprocess.run(
        [sys.executable, "-m", "dcn_ray", "report", "search", "--storage", str(storage)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0 and "ranked by mean best validation IoU" in report.stdout
    results = (storage / "search" / "results.md").read_text()
    assert results.count("| stopped |") == len(stopped)
    assert results.count("| finished |") == len(runs) - len(stopped)


def test_the_search_report_ranks_by_validation_over_finished_seeds_and_charts_the_best_so_far(tmp_path):
    from dcn_ray.results import search_report

    rows = [
        {"config": "a", "seed": 0, "status": "finished", "best_val": 0.5, "test": 0.45, "seconds": 60, "ended": 100},
        {"config": "a", "seed": 1, "status": "finished", "best_val": 0.6, "test": 0.55, "seconds": 60, "ended": 110},
        {"config": "b", "seed": 0, "status": "stopped", "best_val": 0.9, "test": None, "seconds": 20, "ended": 120},
        {"config": "b", "seed": 1, "status": "finished", "best_val": 0.7, "test": 0.6, "seconds": 60, "ended": 170},
        {"config": "c", "seed": 0, "status": "errored", "best_val": None, "test": None, "seconds": 5, "ended": 180},
    ]
    ranked = search_report.configurations(rows)
    assert [c["config"] for c in ranked] == ["b", "a", "c"]
    assert ranked[0]["val"] == 0.7 and ranked[0]["stopped"] == 1  # the stopped seed's 0.9 is not averaged
    assert ranked[1]["test"].n == 2 and ranked[1]["test"].mean == pytest.approx(0.5)
    points = search_report.best_so_far(rows)
    assert [(n, round(h * 3600), b) for n, h, b in points][:2] == [(1, 120, 0.55), (2, 200, 0.7)]
    files = search_report.write(rows, tmp_path, "optuna")
    assert [f.name for f in files] == ["search.md", "best_so_far.png"] and files[1].stat().st_size > 1000
    text = files[0].read_text()
    assert "| 1 | b | 1 | 1 | 0 | 0.7000 |" in text and "not averaged" in text


@pytest.mark.integration
def test_a_random_search_without_asha_logs_each_trial_to_an_mlflow_server(
    module_ray, synthetic_stack, mlflow_server, tmp_path
):
    """random over a key of two sections, no scheduler, a real MLflow server: each configuration runs
    its seed to the end, one child run each with the sampled values as params; the search's report."""
    from conftest import small_job, sweep_on_local_ray
    from mlflow.tracking import MlflowClient

    raw = small_job(
        *synthetic_stack,
        name="random-search",
        train={"steps": 12, "eval_every": 6, "batch_size": 2, "crop": 32, "threads": 1},
        sweep={
            "kernels": [[4, 8, 16]],
            "resources": {"gpu": 0, "cpu": 1},
            "search": {
                "algorithm": "random",
                "trials": 2,
                "seed": 3,
                "space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-2]}, "model.width": {"choice": [2, 4]}},
            },
        },
        tracking={"uri": mlflow_server.uri, "experiment": "random-search"},
    )
    outcome = sweep_on_local_ray(raw, tmp_path / "runs")
    assert not outcome.interrupted and outcome.errored == 0
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("random-search")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert 1 <= len(runs) <= 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert "stopped_early" not in run.data.tags and "best_val_iou" in run.data.metrics  # no test split here
        lr, width = float(run.data.params["train.lr"]), int(run.data.params["model.width"])
        assert 1e-3 <= lr <= 1e-2 and run.data.tags["config"].startswith("4-8-16_train.lr=")
        assert f"model.width={width}" in run.data.tags["config"]
    rows = outcome.table.to_pylist()
    assert [r["status"] for r in rows] == ["finished"] * len(runs)
    assert f"{len(runs)} configuration(s) tried" in (Path(outcome.folder) / "search.md").read_text()
