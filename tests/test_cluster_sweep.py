"""A real two-node Ray cluster on loopback (`ray start --head` + `ray start --address`):
`dcn-ray sweep --address` and `dcn-ray submit` each run a sweep whose trials use both nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
        # two 1-CPU trials at once on two 1-CPU nodes: one on each. Each trains long enough (seconds) for the
        # second's worker to start while the first runs: Tune gives a pending trial the worker of one that
        # finished (reuse_actors), so two short trials may both run on one node, one after the other.
        train={"steps": 1200, "eval_every": 600},  # about 11 s of training on an idle core, 4 x a worker's start
        sweep={"kernels": [[4, 8, 16], [2, 8, 16]], "resources": {"gpu": 0, "cpu": 1}},
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
    assert sorted(r.data.tags["kernels"] for r in children) == ["2-8-16", "4-8-16"]
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
    assert "| 4, 8, 16 | 0 | grid | finished |" in done.stdout
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
    assert "SUCCEEDED" in done.stderr and "| 4, 8, 16 | 0 | grid | finished |" in done.stdout
    assert "Uploading package" not in done.stdout + done.stderr  # Ray's SDK lines only with -v
    status = dcn_ray("status", submission, "--address", two_nodes.dashboard_url, cluster=two_nodes, cwd=tmp_path)
    assert status.stdout.strip() == "SUCCEEDED"
    assert (tmp_path / "runs" / "cluster_submit" / "results.parquet").is_file()
    assert_trials_on_both_nodes(mlflow_server.uri, "cluster_submit")


def test_without_an_address_dcn_ray_starts_its_own_ray_not_a_running_cluster(two_nodes, tmp_path):
    """A `ray start` cluster on this machine (another user's) is never joined by a local sweep.

    A bare ``ray.init()`` joins the cluster named in ``<ray temp dir>/ray_current_cluster``, which
    ``ray start`` writes; here that file names the running two-node cluster.
    """
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths live below it
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text(two_nodes.address)
        script = (
            "import ray\n"
            "from dcn_ray.runtime import alive_nodes, keep_local_ray_on_loopback, ray_session\n"
            "keep_local_ray_on_loopback(None)\n"
            "with ray_session(None):\n"
            "    print('GCS', ray.get_runtime_context().gcs_address, 'NODES', len(alive_nodes()))\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env={**env, **two_nodes.auth_env, "RAY_TMPDIR": str(temp)},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("GCS"))
    gcs, nodes = line.split()[1], int(line.split()[3])
    assert gcs != two_nodes.address and nodes == 1
