"""Faults lose no finished work: a killed trial, a killed driver, a lost node, MLflow down."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from conftest import MlflowServer, child_runs, small_job, sweep_on_local_ray
from mlflow.tracking import MlflowClient
from processes import SweepDriver, resume

from dcn_ray.track.runs import TrialRun, prepare_experiment, reconcile, start_parent_run

pytestmark = pytest.mark.integration


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def val_iou_steps(uri: str, run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_iou")]


def slow_job(stack, name: str, uri: str, **sections) -> dict:
    """Trials slow enough (a few seconds) to be hit mid-training."""
    train = {"steps": 210, "eval_every": 30, "batch_size": 4, "crop": 48}
    return small_job(*stack, name=name, train=train, tracking={"uri": uri, "experiment": name}, **sections)


def test_sigkilled_trial_retries_from_its_checkpoint_in_the_same_run(synthetic_stack, mlflow_server, tmp_path):
    raw = slow_job(
        synthetic_stack,
        "killtrial",
        mlflow_server.uri,
        sweep={"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}, "max_failures": 2},
    )
    killed: dict[str, int] = {}

    def kill_mid_training():
        def running_trial():
            runs = child_runs(mlflow_server.uri, "killtrial")
            if runs and len(val_iou_steps(mlflow_server.uri, runs[0].info.run_id)) >= 2:
                return runs[0]
            return None

        run = wait_for(running_trial, 120, "the trial to report twice", interval=0.05)
        killed["pid"] = int(run.data.tags["pid"])
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_training, daemon=True)
    killer.start()  # it waits for the trial to report through MLflow
    outcome = sweep_on_local_ray(raw, tmp_path)
    killer.join(timeout=5)

    assert "pid" in killed, "the trial was never killed"
    assert outcome.errored == 0 and outcome.table.column("status").to_pylist() == ["finished"]
    (run,) = child_runs(mlflow_server.uri, "killtrial")
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["pid"]) != killed["pid"], "the retry ran in a new process"
    assert int(run.data.tags["resumed_from_step"]) >= 30, "the retry started from a checkpoint, not from scratch"
    assert val_iou_steps(mlflow_server.uri, run.info.run_id) == list(range(30, raw["train"]["steps"] + 1, 30)), (
        "one continuous metric history"
    )


def test_killed_driver_then_resume_reruns_nothing_finished(synthetic_stack, mlflow_server, tmp_path):
    """The driver dies during the follow-up phase; resume neither loses nor duplicates work."""
    raw = slow_job(
        synthetic_stack,
        "killdriver",
        mlflow_server.uri,
        sweep={
            "kernels": [[4, 8, 16], [2, 8, 16], [6, 8, 16]],
            "resources": {"gpu": 0, "cpu": 1},
            # the weak branch fixed: the round is queued at once, whatever one seed could tell (the sham arm
            # through a real sweep: tests/test_followup_sweep.py)
            "followup": {"enabled": True, "steps": 2, "controls": 1, "weak": "F3", "sham": False},
        },
    )
    raw["train"]["steps"] = 90  # three evaluations: a trial is still seen running, six of them cost less
    storage = tmp_path / "runs"
    with SweepDriver(raw, tmp_path, storage) as driver:

        def followup_running():
            runs = child_runs(mlflow_server.uri, "killdriver")
            statuses = [r.info.status for r in runs]
            running_followup = any(r.info.status == "RUNNING" and r.data.tags.get("phase") != "grid" for r in runs)
            return runs if "FINISHED" in statuses and running_followup else None

        wait_for(followup_running, 240, "a follow-up running while other trials are finished", interval=0.2)
        driver.kill()

    before = {r.info.run_id: r for r in child_runs(mlflow_server.uri, "killdriver")}
    finished = {run_id: run for run_id, run in before.items() if run.info.status == "FINISHED"}
    assert finished
    checkpoints = {
        run_id: _checkpoint_files(storage / "killdriver", run.data.tags["tune_trial_id"])
        for run_id, run in finished.items()
    }

    resumed = resume("killdriver", storage, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    after = child_runs(mlflow_server.uri, "killdriver")
    configs = [r.data.tags["config"] for r in after]
    assert len(configs) == len(set(configs)) == 6, f"one child run per configuration: {configs}"
    assert sorted(r.data.tags["phase"] for r in after) == ["control", "followup", "followup", "grid", "grid", "grid"]
    assert all(r.info.status == "FINISHED" for r in after)
    for run in after:
        if run.info.run_id in finished:
            assert run.info.end_time == finished[run.info.run_id].info.end_time, "a finished trial was run again"
            assert (
                _checkpoint_files(storage / "killdriver", run.data.tags["tune_trial_id"])
                == checkpoints[run.info.run_id]
            )
    assert (storage / "killdriver" / "results.md").read_text().count("| finished |") == 6


def test_killed_driver_then_resume_continues_the_running_trial_where_it_stopped(
    synthetic_stack, mlflow_server, tmp_path, monkeypatch
):
    """The trial running when the driver died goes on from the newest checkpoint it persisted in the
    sweep's storage: its MLflow metric history has every step once, none twice."""
    uri = mlflow_server.uri
    raw = slow_job(
        synthetic_stack, "keepprogress", uri, sweep={"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}}
    )
    raw["train"]["steps"] = steps = 600  # killed after its third evaluation (step 90): 510 steps of margin under load
    storage = tmp_path / "runs"
    # Tune's experiment snapshot lags behind the trial (at the kill it may know neither the trial nor
    # its newest checkpoint): only the storage has them. Deterministic here by a long snapshot period.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    with SweepDriver(raw, tmp_path, storage) as driver:

        def evaluated_three_times():
            runs = child_runs(uri, "keepprogress")
            return runs[0] if runs and len(val_iou_steps(uri, runs[0].info.run_id)) >= 3 else None

        run = wait_for(evaluated_three_times, 240, "three evaluations of the trial", interval=0.05)
        driver.kill()
    stopped_at = val_iou_steps(uri, run.info.run_id)[-1]
    assert stopped_at < steps, "the trial finished before the kill"
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S")

    resumed = resume("keepprogress", storage, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = child_runs(uri, "keepprogress")
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert val_iou_steps(uri, after.info.run_id) == list(range(30, steps + 1, 30)), "every step once, none twice"
    assert int(after.data.tags["resumed_from_step"]) >= stopped_at, "continued from its newest checkpoint"


def _checkpoint_files(sweep_folder: Path, trial_id: str) -> dict[str, int]:
    (trial_folder,) = [p for p in sweep_folder.iterdir() if p.is_dir() and p.name.endswith(trial_id)]
    return {str(p.relative_to(trial_folder)): p.stat().st_mtime_ns for p in trial_folder.glob("checkpoint_*/*.pt")}


def test_sweep_completes_when_a_node_is_lost(synthetic_stack, mlflow_server, tmp_path):
    from ray.cluster_utils import Cluster

    raw = slow_job(
        synthetic_stack,
        "lostnode",
        mlflow_server.uri,
        # two trials at once, one on each 1-CPU node: the worker's is moved to the head
        sweep={"kernels": [[4, 8, 16], [2, 8, 16]], "resources": {"gpu": 0, "cpu": 1}, "max_failures": 3},
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    removed: dict[str, str] = {}

    def remove_worker_mid_trial():
        def trial_on_worker():
            for run in child_runs(mlflow_server.uri, "lostnode"):
                if run.data.tags.get("ray_node_id") == worker.node_id and val_iou_steps(
                    mlflow_server.uri, run.info.run_id
                ):
                    return run
            return None

        run = wait_for(trial_on_worker, 180, "a trial to train on the worker node")
        removed["run"] = run.info.run_id
        cluster.remove_node(worker)

    remover = threading.Thread(target=remove_worker_mid_trial, daemon=True)
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        remover.start()
        outcome = sweep_on_local_ray(raw, tmp_path)  # on the cluster's Ray, initialized here
    finally:
        ray.shutdown()
        cluster.shutdown()
    remover.join(timeout=5)

    assert "run" in removed, "no trial ran on the worker node"
    assert outcome.errored == 0 and set(outcome.table.column("status").to_pylist()) == {"finished"}
    runs = child_runs(mlflow_server.uri, "lostnode")
    assert sorted(r.data.tags["kernels"] for r in runs) == ["2-8-16", "4-8-16"]
    moved = next(r for r in runs if r.info.run_id == removed["run"])
    assert moved.info.status == "FINISHED" and moved.data.tags["ray_node_id"] != worker.node_id
    assert int(moved.data.tags["resumed_from_step"]) >= 30


def test_metrics_wait_for_a_tracking_server_that_went_down(empty_store, tmp_path):
    server = MlflowServer(tmp_path / "server", empty_store).start()
    try:
        experiment = prepare_experiment(server.uri, "outage")
        parent = start_parent_run(server.uri, experiment, "outage", {})
        run = TrialRun(server.uri, experiment, parent, "trial-1")
        run.open(name="4-8-16", tags={}, params={"k1": 4}, experiment_id=experiment)
        run.log_metrics({"val_iou": 0.5}, step=1)
        server.stop()
        run.log_metrics({"val_iou": 0.6}, step=2)  # server down: buffered, training goes on
        run.log_metrics({"val_iou": 0.7}, step=3)
        server.start()  # same port, same store
        run.flush()
        assert val_iou_steps(server.uri, run.run_id) == [1, 2, 3]
        again = TrialRun(server.uri, experiment, parent, "trial-1")
        assert again.run_id == run.run_id, "a retry finds the same child run"
    finally:
        server.stop()


def test_a_trial_relaunched_under_a_new_id_adopts_the_run_of_its_kernels(mlflow_server):
    """After a restore forgot a trial, its configuration comes back under a new trial id: same run."""
    experiment = prepare_experiment(mlflow_server.uri, "adopt")
    parent = start_parent_run(mlflow_server.uri, experiment, "adopt", {})
    first = TrialRun(mlflow_server.uri, experiment, parent, "aaaa1111", "4-8-14")
    first.open(name="4-8-14", tags={"trial_key": "4-8-14"}, params={"k3": 14}, experiment_id=experiment)
    other = TrialRun(mlflow_server.uri, experiment, parent, "cccc3333", "2-8-16")
    assert other.run_id is None and other.adopted_from is None

    again = TrialRun(mlflow_server.uri, experiment, parent, "bbbb2222", "4-8-14")
    assert again.run_id == first.run_id and again.adopted_from == "aaaa1111"
    assert TrialRun(mlflow_server.uri, experiment, parent, "bbbb2222", "4-8-14").adopted_from is None, (
        "found by its own id now"
    )


@pytest.mark.parametrize("interrupted", [False, True], ids=["ended", "interrupted"])
def test_run_statuses_follow_tunes_verdict(mlflow_server, interrupted):
    """The driver ends child runs from Tune's rows: a trial that errored before it reported is found by
    its trial id; on an interrupted sweep the runs still RUNNING end KILLED, never FAILED."""
    experiment = prepare_experiment(mlflow_server.uri, f"verdict-{interrupted}")
    parent = start_parent_run(mlflow_server.uri, experiment, "verdict", {})
    opened = {}
    for trial in ("done", "broke", "cut"):
        run = TrialRun(mlflow_server.uri, experiment, parent, trial, trial)
        opened[trial] = run.open(name=trial, tags={"trial_key": trial}, params={}, experiment_id=experiment)
    rows = [
        {"trial_id": "done", "mlflow_run_id": opened["done"], "status": "finished"},
        {"trial_id": "broke", "status": "errored"},  # died before its first report: no run id in Tune's row
    ]
    reconcile(mlflow_server.uri, experiment, parent, rows, interrupted=interrupted)
    client = MlflowClient(mlflow_server.uri)
    status = {trial: client.get_run(run_id).info.status for trial, run_id in opened.items()}
    assert status == {"done": "FINISHED", "broke": "FAILED", "cut": "KILLED" if interrupted else "RUNNING"}


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_marks_running_child_runs_killed(synthetic_stack, mlflow_server, tmp_path, stop, code):
    """Ctrl-C, and SIGTERM alike (a scheduler or container stop): child runs KILLED, resumable."""
    name = f"ctrlc{code}"
    raw = slow_job(
        synthetic_stack,
        name,
        mlflow_server.uri,
        sweep={"kernels": [[4, 8, 16], [2, 8, 16], [6, 8, 16]], "resources": {"gpu": 0, "cpu": 1}},
    )
    raw["train"]["steps"] = 3000  # long enough to still be running when interrupted
    with SweepDriver(raw, tmp_path, tmp_path / "runs") as driver:
        wait_for(
            lambda: any(val_iou_steps(mlflow_server.uri, r.info.run_id) for r in child_runs(mlflow_server.uri, name)),
            180,
            "a trial to report",
        )
        driver.process.send_signal(stop)
        exit_code, stderr = driver.finish(timeout=120)
    assert exit_code == code, stderr[-2000:]
    assert f"dcn-ray resume {name}" in stderr
    runs = child_runs(mlflow_server.uri, name)
    assert runs and {r.info.status for r in runs} == {"KILLED"}
    client = MlflowClient(mlflow_server.uri)
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"


def test_a_trial_out_of_retries_ends_failed_and_the_sweep_exits_1(synthetic_stack, mlflow_server, tmp_path):
    raw = slow_job(
        synthetic_stack,
        "outofretries",
        mlflow_server.uri,
        sweep={"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}, "max_failures": 0},
    )
    with SweepDriver(raw, tmp_path, tmp_path / "runs") as driver:
        run = wait_for(
            lambda: next(
                (
                    r
                    for r in child_runs(mlflow_server.uri, "outofretries")
                    if val_iou_steps(mlflow_server.uri, r.info.run_id)
                ),
                None,
            ),
            180,
            "the trial to report",
        )
        os.kill(int(run.data.tags["pid"]), signal.SIGKILL)
        code, stderr = driver.finish(timeout=180)
    assert code == 1, stderr[-2000:]
    assert "1 trial(s) failed after all retries" in stderr
    # the kill in one line, without Ray's traceback or library warnings around it
    assert "Traceback" not in stderr and "WARNING" not in stderr and "Warning" not in stderr, stderr[-3000:]
    # nor Ray's worker-death paragraph or its own log lines ("2026-12-03 08:17:43,126	ERROR tune.py:1035 -- ...")
    assert "unexpected system error" not in stderr and not re.search(r"(INFO|ERROR) \w+\.py:\d+ --", stderr), stderr
    (killed,) = [line for line in stderr.splitlines() if "errored  grid-4-8-16-s0" in line]
    assert "died" in killed and "no retry left" in killed, killed
    (run,) = child_runs(mlflow_server.uri, "outofretries")
    assert run.info.status == "FAILED"
    assert "| grid | errored |" in (tmp_path / "runs" / "outofretries" / "results.md").read_text()
