"""The round planner and the trial identity, without Ray: grid x seeds, rounds, the weak branch over seeds."""

from __future__ import annotations

import pickle

import pytest

from dcn_ray.job.config import FollowupConfig
from dcn_ray.tune.planner import RoundPlanner, replay_rounds
from dcn_ray.tune.spec import METRIC, TrialSpec
from dcn_ray.tune.trial import already_finished

GRID = [(4, 8, 16), (2, 8, 16), (6, 8, 16)]


def naming(weak: int, seed: int = 0, gap: float = 0.2) -> dict[str, float]:
    """Branch results of a trial whose branch ``weak`` is the lowest by about ``gap`` (calibrated)."""
    values = {f"calibrated_F{b + 1}": 0.5 + 0.01 * ((seed + b) % 3) for b in range(3)}
    values[f"calibrated_F{weak + 1}"] -= gap
    return {"weak_branch": weak, **values}


def _run(planner: RoundPlanner, results) -> list[TrialSpec]:
    """Start every queued trial and finish it with ``results(spec)``; return all specs in order."""
    started, counter = [], 0
    while not planner.finished:
        live = []
        while (spec := planner.next_trial(f"t{counter}")) is not None:
            live.append((f"t{counter}", spec))
            started.append(spec)
            counter += 1
        assert live, "nothing queued although trials remain"
        for trial_id, spec in live:
            planner.complete(trial_id, results(spec), error=False)
    return started


def test_trial_spec_round_trips_through_the_tune_config():
    spec = TrialSpec.of(
        (4, 8, 14), seed=2, phase="control", round=1, derived_from="r1", reference=(4, 8, 16), reference_weak="F3"
    )
    config = spec.to_config()
    assert (config["k1"], config["k2"], config["k3"], config["seed"]) == (4, 8, 14, 2)
    assert TrialSpec.from_config(config) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.name == "control-4-8-14-s2" and spec.config_name == "4-8-14"
    assert spec.tags()["config"] == "4-8-14" and spec.params()["seed"] == 2
    with pytest.raises(ValueError, match="k3=6"):
        TrialSpec.of((4, 8, 6))
    with pytest.raises(ValueError, match="phase"):
        TrialSpec.of((4, 8, 16), phase="other")


def test_grid_runs_every_configuration_once_per_seed():
    planner = RoundPlanner(GRID, (0, 1), FollowupConfig(enabled=False))
    started = _run(planner, lambda spec: {METRIC: 0.5, "weak_branch": 2})
    assert sorted(s.key for s in started) == sorted((k, s) for k in GRID for s in (0, 1))
    assert all(s.phase == "grid" for s in started)


def test_first_round_waits_for_every_reference_seed_and_decides_over_them():
    planner = RoundPlanner(GRID, (0, 1, 2), FollowupConfig(enabled=True, steps=2, seed=5))
    first = [planner.next_trial(f"r{s}") for s in range(3)]
    assert all(spec.kernels == (4, 8, 16) for spec in first)  # the reference comes first
    planner.complete("r0", {METRIC: 0.8, **naming(2, 0), "mlflow_run_id": "a"}, False)
    # seed 1: F3 is lowest alone by a hair only (no vote), but the mean over seeds is clear
    planner.complete("r1", {METRIC: 0.8, **naming(2, 1, gap=0.12), "weak_branch": -1, "mlflow_run_id": "b"}, False)
    assert planner.decisions == []  # seed 2 of the reference is still running
    planner.complete("r2", {METRIC: 0.8, **naming(2, 2), "mlflow_run_id": "c"}, False)
    (decision,) = planner.decisions
    assert decision.weak == 2 and decision.agreement == "F3 (lowest in 2 of 3 seeds)"
    assert decision.guided == ((4, 8, 14), (4, 8, 12))
    # every matched control, no draw: the same change of k / stride on F2 and F1, or F3 enlarged
    assert decision.controls == ((4, 7, 16), (4, 8, 18), (3, 8, 16), (4, 6, 16), (4, 8, 20))
    assert not {s.kernels for s in planner.queue if s.phase not in ("grid", "sham")} & set(GRID)  # runs once
    followups = [s for s in planner.queue if s.phase == "followup"]
    assert sorted(s.key for s in followups) == sorted((k, s) for k in decision.guided for s in (0, 1, 2))
    assert all(s.derived_from == "a,b,c" and s.reference == (4, 8, 16) and s.reference_weak == "F3" for s in followups)


def test_no_branch_weakest_beyond_the_seed_spread_runs_controls_only():
    planner = RoundPlanner([(4, 8, 16)], (0, 1), FollowupConfig(enabled=True, controls=2))
    planner.next_trial("a"), planner.next_trial("b")
    planner.complete("a", {METRIC: 0.8, **naming(0)}, False)
    planner.complete("b", {METRIC: 0.8, **naming(2)}, False)
    (decision,) = planner.decisions
    assert decision.weak is None and decision.guided == () and decision.controls == ()
    assert len(decision.extras) == 2 and decision.agreement == "none clearly weakest (seeds: F1, F3)"
    assert {s.phase for s in planner.queue} == {"random"} and len(planner.queue) == 4  # 2 x 2 seeds


def test_later_rounds_start_from_the_best_guided_configuration_by_mean_over_seeds():
    planner = RoundPlanner([(4, 8, 16)], (0, 1), FollowupConfig(enabled=True, steps=2, controls=1, rounds=2))
    # seed 0 favours 4-8-14, but the mean over both seeds favours 4-8-12
    scores = {((4, 8, 14), 0): 0.90, ((4, 8, 14), 1): 0.70, ((4, 8, 12), 0): 0.85, ((4, 8, 12), 1): 0.84}
    started = _run(planner, lambda spec: {METRIC: scores.get(spec.key, 0.8), **naming(2, spec.seed)})
    assert [d.round for d in planner.decisions] == [1, 2]
    assert planner.decisions[1].reference == (4, 8, 12)
    assert planner.decisions[1].guided == ((4, 8, 10), (4, 8, 8))
    second = [s for s in started if s.round == 2]
    assert second and all(s.reference == (4, 8, 12) for s in second)
    assert len({s.key for s in started}) == len(started)  # nothing runs twice


def test_planner_survives_pickling_midway():
    """The searcher saves the planner with pickle for Tuner.restore."""
    planner = RoundPlanner(GRID, (0,), FollowupConfig(enabled=True, steps=1, controls=1))
    planner.next_trial("x")
    restored = pickle.loads(pickle.dumps(planner))
    restored.complete("x", {METRIC: 0.7, **naming(1, gap=0.4)}, False)  # one seed: beyond the seed spread
    assert restored.decisions[0].guided == ((4, 6, 16),)


def test_an_older_sweeps_pickled_planner_names_the_jobs_modules_by_their_old_names(tmp_path):
    """A sweep started before the job/ package was made resumes: its state says dcn_ray.job.config."""
    from dcn_ray.tune.searcher import GridThenFollowups

    planner = RoundPlanner(GRID, (0,), FollowupConfig(enabled=True, steps=1, controls=1))
    text = pickle.dumps(planner, protocol=0)
    assert b"dcn_ray.job.config\n" in text
    old = tmp_path / "searcher-state.pkl"
    old.write_bytes(text.replace(b"dcn_ray.job.", b"dcn_ray."))
    searcher = GridThenFollowups(RoundPlanner(GRID, (0,), FollowupConfig()))
    searcher.restore(str(old))
    assert searcher.planner.followup == planner.followup and len(searcher.planner.queue) == len(planner.queue)


def test_already_finished_is_one_decision():
    assert already_finished(None, None) is None
    assert already_finished({"val_iou": 0.5}, None) is None  # a FINISHED run without the final metric
    assert already_finished({METRIC: 0.7}, None) == {METRIC: 0.7}
    assert already_finished(None, {"step": 10}) is None  # mid-training state: resume, not done
    assert already_finished(None, {"step": 10, "final": {METRIC: 0.6}}) == {METRIC: 0.6}


def test_guided_configurations_already_in_the_grid_count_and_are_not_rerun():
    """Table 1 already holds the paper's guided rows: they are an arm of the comparison, not rerun."""
    grid = [(4, 8, 16), (4, 8, 14), (4, 8, 12), (2, 8, 16)]
    planner = RoundPlanner(grid, (0,), FollowupConfig(enabled=True, steps=3, seed=1))
    started = _run(planner, lambda spec: {METRIC: 0.8, **naming(2, gap=0.4)})  # one seed: beyond the seed spread
    (decision,) = planner.decisions
    assert decision.guided == ((4, 8, 14), (4, 8, 12), (4, 8, 10))
    new_guided = [s.kernels for s in started if s.phase == "followup"]
    assert new_guided == [(4, 8, 10)]  # the two in the grid ran once, as grid trials
    assert len([s for s in started if s.kernels in decision.guided]) == 3


def test_replay_rebuilds_the_rounds_from_the_results_rows():
    settings = FollowupConfig(enabled=True, steps=2, rounds=2, seed=4)
    planner = RoundPlanner([(4, 8, 16), (2, 8, 16)], (0, 1), settings)
    weak = {(4, 8, 16): 2, (4, 8, 14): 1, (4, 8, 12): 2}
    started = _run(
        planner,
        lambda spec: {METRIC: 0.8 + 0.01 * (16 - spec.kernels[2]), **naming(weak.get(spec.kernels, 0), spec.seed)},
    )
    rows = [
        {"k1": s.kernels[0], "k2": s.kernels[1], "k3": s.kernels[2], "seed": s.seed, "status": "finished",
         "config": s.config_name, METRIC: 0.8 + 0.01 * (16 - s.kernels[2]), **naming(weak.get(s.kernels, 0), s.seed),
         "weak_branch": ("F1", "F2", "F3")[weak.get(s.kernels, 0)]}
        for s in started
    ]  # fmt: skip
    replayed = replay_rounds(rows, settings)
    assert [(d.reference, d.weak, d.guided, d.controls, d.sham_config) for d in replayed] == [
        (d.reference, d.weak, d.guided, d.controls, d.sham_config) for d in planner.decisions
    ]
    assert [d.sham_config for d in replayed] == ["4-8-16~sham-F3", "4-8-12~sham-F3"]  # shams never a reference
    assert len(replayed) == 2 and replay_rounds(rows, FollowupConfig(enabled=False)) == []


def test_a_relative_step_gives_every_branch_the_same_change_of_k_over_stride():
    from dcn_ray.kernels import relative_change

    for weak, guided, controls in (
        (2, (4, 8, 12), ((3, 8, 16), (4, 6, 16), (4, 8, 20))),
        (1, (4, 6, 16), ((3, 8, 16), (4, 8, 12), (4, 10, 16))),
        (0, (3, 8, 16), ((4, 6, 16), (4, 8, 12), (5, 8, 16))),
    ):
        planner = RoundPlanner([(4, 8, 16)], (0, 1, 2), FollowupConfig(enabled=True, steps=1, relative_step=0.5))
        _run(planner, lambda spec, weak=weak: {METRIC: 0.8, **naming(weak, spec.seed)})
        (decision,) = planner.decisions
        assert decision.guided == (guided,) and decision.controls == controls
        assert {abs(relative_change((4, 8, 16), k)[1]) for k in (guided, *controls)} == {0.5}


def test_every_round_runs_a_sham_with_every_guided_seed():
    planner = RoundPlanner([(4, 8, 16)], (14, 15, 16), FollowupConfig(enabled=True, steps=1, relative_step=0.5))
    for seed in range(3):
        planner.next_trial(f"r{seed}")
    restored = pickle.loads(pickle.dumps(planner))  # the searcher's save / restore, midway
    for seed in range(3):
        restored.complete(f"r{seed}", {METRIC: 0.8, **naming(2, seed)}, False)
    (decision,) = restored.decisions
    assert decision.guided == ((4, 8, 12),) and decision.sham == "F3" and decision.sham_config == "4-8-16~sham-F3"
    restored = pickle.loads(pickle.dumps(restored))
    started = _run(restored, lambda spec: {METRIC: 0.8, **naming(2, spec.seed)})
    shams = [s for s in started if s.phase == "sham"]
    guided = [s for s in started if s.phase == "followup"]
    assert sorted(s.seed for s in shams) == sorted(s.seed for s in guided) == [14, 15, 16]
    assert all(s.kernels == (4, 8, 16) and s.grid_values == (("model.redraw", ("F3",)),) for s in shams)
    assert {s.name for s in shams} == {f"sham-4-8-16~sham-F3-s{seed}" for seed in (14, 15, 16)}
    assert all(s.reference == (4, 8, 16) and s.reference_weak == "F3" for s in shams)
    assert TrialSpec.from_config(shams[0].to_config()) == shams[0]
    assert len({s.key for s in started}) == len(started)  # the sham and the reference are distinct trials
    off = RoundPlanner([(4, 8, 16)], (0,), FollowupConfig(enabled=True, steps=1, sham=False))
    started = _run(off, lambda spec: {METRIC: 0.8, **naming(2, gap=0.4)})
    assert off.decisions[0].guided and not [s for s in started if s.phase == "sham"]


def test_a_weak_branch_fixed_in_advance_queues_the_round_at_once_pairs_first():
    """A replication: the rule is not asked; guided and sham run first, seed by seed, the reference last."""
    settings = FollowupConfig(enabled=True, steps=1, relative_step=0.5, weak="F3")
    planner = RoundPlanner([(4, 8, 16)], (14, 15), settings)
    (decision,) = planner.decisions
    assert decision.weak == 2 and decision.fixed and decision.agreement == "F3 (fixed in advance)"
    assert decision.controls == ((3, 8, 16), (4, 6, 16), (4, 8, 20))
    assert [s.name for s in planner.queue[:4]] == [
        "followup-4-8-12-s14", "sham-4-8-16~sham-F3-s14", "followup-4-8-12-s15", "sham-4-8-16~sham-F3-s15"
    ]  # fmt: skip
    assert [s.phase for s in planner.queue[4:]] == ["control"] * 6 + ["grid"] * 2
    started = _run(planner, lambda spec: {METRIC: 0.8, **naming(0, spec.seed)})  # the rule would name F1
    assert len(started) == 12 and len(planner.decisions) == 1
    rows = [{"k1": s.kernels[0], "k2": s.kernels[1], "k3": s.kernels[2], "seed": s.seed, "status": "finished",
             "config": s.config_name, METRIC: 0.8, **naming(0, s.seed), "weak_branch": "F1"} for s in started]  # fmt: skip
    (replayed,) = replay_rounds(rows, settings)
    assert replayed.agreement == "F3 (fixed in advance; lowest in 0 of 2 seeds)" and replayed.sham == "F3"
    assert replayed.guided == decision.guided and replayed.controls == decision.controls
    (without_reference,) = replay_rounds([r for r in rows if r["config"] != "4-8-16"], settings)
    assert without_reference.guided == ((4, 8, 12),)
