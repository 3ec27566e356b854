"""bench/search_replay.py, the tabulated search benchmark: strategies keep to their budget, never
steer by a test score, and ASHA's stopped configurations are never the pick."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "search_replay.py"


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("search_replay", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table(replay, test_shift: float = 0.0):
    """lr x width, 4 seeds; lr 1e-3 and width 16 are better; width 16 costs three times as much."""
    rng = np.random.default_rng(0)
    rows, values = {}, {}
    for lr, width in itertools.product([3e-4, 1e-3, 3e-3], [8, 16]):
        name = f"lr={lr}_w={width}"
        quality = 0.6 + 0.1 * (lr == 1e-3) + 0.03 * (width == 16)
        values[name] = {"train.lr": lr, "model.width": width}
        rows[name] = {}
        for seed in range(4):
            curve = tuple((s, quality * (1 - math.exp(-s / 150)) + rng.normal(0, 0.01)) for s in range(50, 601, 50))
            test = quality + rng.normal(0, 0.02) + test_shift * rng.normal()
            rows[name][seed] = replay.Row(max(v for _, v in curve), test, 3.0 if width == 16 else 1.0, curve)
    return replay.Table("synthetic", rows, values, steps=600, order=list(rows))


def test_every_strategy_keeps_to_its_budget_and_asha_never_picks_a_stopped_configuration(replay):
    found = table(replay)
    asha = replay.SchedulerConfig(algorithm="asha", grace_steps=100, reduction_factor=3)
    for r in range(2):
        chosen, evaluation = replay.splits(found.seeds, 2, r)
        assert sorted(chosen + evaluation) == [0, 1, 2, 3] and len(chosen) == 2
        for budget in (4.0, 9.0):
            for strategy in (replay.grid, replay.shuffled, replay.random, lambda p, q: replay.tpe(p, q, 4)):
                runner = replay.Replay(found, chosen, budget)
                outcome = strategy(runner, r)
                assert runner.spent <= budget + 1e-9 and len(set(outcome.tried)) == len(outcome.tried)
                assert outcome.pick in outcome.tried
            runner = replay.Replay(found, chosen, budget, asha)
            outcome = replay.tpe(runner, r, 4)
            assert runner.spent <= budget + 1e-9
            assert outcome.pick is None or outcome.pick in runner.eligible
            stopped = set(outcome.tried) - set(runner.eligible)
            assert outcome.pick not in stopped


def test_no_strategy_reads_a_test_score(replay):
    """Picks are the same whatever the test scores are: they steer by validation alone."""
    plain, shifted = table(replay), table(replay, test_shift=0.5)
    assert any(plain.rows[c][0].test != shifted.rows[c][0].test for c in plain.rows)
    for r in range(2):
        chosen, _ = replay.splits(plain.seeds, 2, r)
        for strategy in (replay.random, lambda p, q: replay.tpe(p, q, 4)):
            picks = [strategy(replay.Replay(t, chosen, 6.0), r).pick for t in (plain, shifted)]
            assert picks[0] == picks[1]


def test_the_score_is_on_unseen_seeds_and_the_grid_runs_in_its_order(replay):
    found = table(replay)
    chosen, evaluation = replay.splits(found.seeds, 2, 0)
    outcome = replay.grid(replay.Replay(found, chosen, 8.0), 0)
    assert outcome.tried == found.order[:2]  # 2 + 6 units on two seeds (width 8, then 16): the budget pays two
    scored = replay.score(found, outcome, evaluation)
    assert scored.pick_test == pytest.approx(found.mean(outcome.pick, evaluation))
    assert dataclasses.asdict(scored)["tried"] == 2


@pytest.mark.integration
def test_a_grid_sweeps_mlflow_runs_become_a_table_the_strategies_replay(replay, synthetic_stack, empty_store, tmp_path):
    """The pre-registered pipeline end to end on a tiny grid: dcn-ray sweep -> MLflow -> `table` -> `replay`."""
    from conftest import small_job, sqlite_copy, sweep_on_local_ray

    uri = sqlite_copy(empty_store, tmp_path)
    raw = small_job(
        *synthetic_stack,
        name="table",
        data={"split": {"train": "0:8", "val": "9:10", "test": "11:12"}},
        train={"steps": 12, "eval_every": 6, "batch_size": 2, "crop": 32, "threads": 1},
        sweep={
            "kernels": [[4, 8, 16]],
            "seeds": 2,
            "resources": {"gpu": 0, "cpu": 1},
            "grid": {"train.lr": [0.001, 0.01]},
        },
        tracking={"uri": uri, "experiment": "table"},
    )
    outcome = sweep_on_local_ray(raw, tmp_path / "runs")
    assert outcome.errored == 0
    out = tmp_path / "table.jsonl"
    assert replay.export_table(uri, "table", out) == 4
    found = replay.read_table(out)
    assert set(found.rows) == {"4-8-16_train.lr=0.001", "4-8-16_train.lr=0.01"} and found.seeds == [0, 1]
    assert found.values["4-8-16_train.lr=0.01"] == {"train.lr": 0.01} and found.steps == 12
    row = found.rows["4-8-16_train.lr=0.01"][0]
    assert [step for step, _ in row.curve] == [6, 12] and row.best_val == max(v for _, v in row.curve)
    results = replay.replicate_all(found, {"selection": 1, "budgets": [1, 2]}, 3, asha=True)
    assert set(results["2 configurations'"]) == {"grid", "shuffled", "random", "tpe", "tpe+asha"}
    assert "### Table table" in replay.summary(found, results)
