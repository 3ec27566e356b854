"""A real two-node Ray cluster on loopback (`ray start --head` + `ray start --address`):
`dcn-ray sweep --address` and `dcn-ray submit` each run a sweep whose trials use both nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import small_job
from mlflow.tracking import MlflowClient
from ray_processes import LocalRayCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_nodes():
    with LocalRayCluster(workers=1, head_cpus=1, worker_cpus=1) as cluster:
        yield cluster


def write_job(stack, folder: Path, name: str, uri: str) -> Path:
    raw = small_job(
        *stack,
        name=name,
        train={"steps": 60, "eval_every": 30, "batch_size": 4, "crop": 64},
        sweep={"kernels": [[4, 8, 16], [2, 8, 16], [6, 8, 16], [4, 8, 12]], "resources": {"gpu": 0, "cpu": 1}},
        tracking={"uri": uri, "experiment": name},
    )
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def dcn_ray(*args: str, cluster: LocalRayCluster, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return subprocess.run(
        [sys.executable, "-m", "dcn_ray", *args],
        cwd=cwd,
        env={**env, **cluster.auth_env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_trials_on_both_nodes(uri: str, experiment: str) -> None:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["kernels"] for r in children) == ["2-8-16", "4-8-12", "4-8-16", "6-8-16"]
    assert all(r.info.status == "FINISHED" and "val_iou" in r.data.metrics for r in children)
    assert len({r.data.tags["ray_node_id"] for r in children}) == 2, "the trials ran on both nodes"


def test_sweep_with_address_uses_both_nodes(two_nodes, synthetic_stack, mlflow_server, tmp_path):
    job = write_job(synthetic_stack, tmp_path, "cluster_sweep", mlflow_server.uri)
    refused = dcn_ray("sweep", str(job), "--address", two_nodes.address, cluster=two_nodes, cwd=tmp_path)
    assert refused.returncode == 2 and "--storage" in refused.stderr, "several nodes need shared storage"

    done = dcn_ray(
        "sweep",
        str(job),
        "--address",
        two_nodes.address,
        "--storage",
        str(tmp_path / "runs"),
        cluster=two_nodes,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 4, 8, 16 | grid | finished |" in done.stdout
    assert_trials_on_both_nodes(mlflow_server.uri, "cluster_sweep")


def test_submit_runs_the_sweep_as_a_ray_job(two_nodes, synthetic_stack, mlflow_server, tmp_path):
    job = write_job(synthetic_stack, tmp_path, "cluster_submit", mlflow_server.uri)
    done = dcn_ray(
        "submit",
        str(job),
        "--address",
        two_nodes.dashboard_url,
        "--storage",
        str(tmp_path / "runs"),
        "--follow",
        cluster=two_nodes,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    submission = done.stdout.splitlines()[0].strip()
    assert "SUCCEEDED" in done.stderr and "| 4, 8, 16 | grid | finished |" in done.stdout
    status = dcn_ray("status", submission, "--address", two_nodes.dashboard_url, cluster=two_nodes, cwd=tmp_path)
    assert status.stdout.strip() == "SUCCEEDED"
    assert (tmp_path / "runs" / "cluster_submit" / "results.parquet").is_file()
    assert_trials_on_both_nodes(mlflow_server.uri, "cluster_submit")
