"""dcn_ray.tune.submit and the local multi-node cluster (cluster/local-cluster.sh via tests/ray_processes.py)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from ray_processes import LocalRayCluster, cluster_auth, ray_auth

from dcn_ray.errors import InputError
from dcn_ray.tune import submit

REPO = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def has_jobs_api() -> bool:
    """The Jobs API lives in the dashboard, which needs ray[default]."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- no cluster


def test_sweep_entrypoint_quotes_every_option():
    entrypoint = submit.sweep_entrypoint(
        "table 1.yaml",
        overrides=["train.steps=40", "name=it's mine"],
        name="t1",
        storage="/mnt/shared/dcn-ray-runs",
        tracking_uri="http://mlflow:5000",
    )
    assert shlex.split(entrypoint) == [
        "python",
        "-m",
        "dcn_ray",
        "sweep",
        "table 1.yaml",
        "--address",
        "auto",
        "--name",
        "t1",
        "--storage",
        "/mnt/shared/dcn-ray-runs",
        "--tracking-uri",
        "http://mlflow:5000",
        "--set",
        "train.steps=40",
        "--set",
        "name=it's mine",
    ]
    assert shlex.split(submit.sweep_entrypoint("j.yaml")) == [
        "python",
        "-m",
        "dcn_ray",
        "sweep",
        "j.yaml",
        "--address",
        "auto",
    ]


def test_job_copy_makes_data_paths_absolute(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job_file = jobs / "table1.yaml"
    job_file.write_text(
        "name: t\ndata:\n  images: ../data/images.tif  # relative to this file\n"
        "  labels: /abs/labels.tif\n  foreground: 255\nsweep:\n  kernels: [[4, 8, 16]]\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    copy = submit.write_job_copy(job_file, out)
    assert copy == out / "table1.yaml"
    raw = yaml.safe_load(copy.read_text())
    assert raw["data"]["images"] == str((tmp_path / "data" / "images.tif").resolve())
    assert raw["data"]["labels"] == "/abs/labels.tif"
    assert raw["data"]["foreground"] == 255 and raw["sweep"]["kernels"] == [[4, 8, 16]]


def test_job_copy_rejects_a_file_that_is_not_a_mapping(tmp_path):
    job_file = tmp_path / "bad.yaml"
    job_file.write_text("- just\n- a list\n")
    with pytest.raises(InputError, match="bad.yaml"):
        submit.write_job_copy(job_file, tmp_path)


def test_missing_job_file_is_input_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError, match="nope.yaml"):
        submit.submit_sweep(missing, address=f"http://127.0.0.1:{closed_port()}")


def test_unreachable_address_is_a_one_line_input_error():
    address = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(InputError) as caught:
        submit.submit_entrypoint(address, "echo hi")
    assert address in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="127.0.0.1"):
        submit.job_status(address, "raysubmit_x")


def test_submit_sweep_checks_the_job_before_contacting_the_cluster():
    address = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(InputError) as caught:
        submit.submit_sweep(REPO / "jobs" / "smoke.yaml", address=address, overrides=["no-equals-sign"])
    assert "no-equals-sign" in str(caught.value) and address not in str(caught.value)


def test_script_refuses_bad_numbers_and_reports_no_cluster(tmp_path):
    script = REPO / "cluster" / "local-cluster.sh"
    bad = subprocess.run(
        ["bash", str(script), "start", "--workers", "two", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "two" in bad.stderr
    status = subprocess.run(
        ["bash", str(script), "status", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 1 and "no local cluster" in status.stdout
    stop = subprocess.run(
        ["bash", str(script), "stop", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert stop.returncode == 0


def test_ray_client_address_is_refused():
    with pytest.raises(InputError, match="dashboard address"):
        submit.job_status("ray://127.0.0.1:10001", "raysubmit_x")


# ----------------------------------------------------------------------------- real clusters


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_local_cluster_runs_tasks_on_every_node_and_stops_everything():
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with LocalRayCluster(workers=1, head_cpus=1, worker_cpus=1) as cluster, cluster_auth(cluster):
        assert cluster.address.startswith("127.0.0.1:")
        assert set(cluster.pids) == {"head", "worker-1"}
        started = cluster.alive()
        assert set(cluster.pids.values()) <= set(started)
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]

            @ray.remote(num_cpus=1)
            def node_id() -> str:
                return ray.get_runtime_context().get_node_id()

            placed = [
                node_id.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                for node in nodes
            ]
            ran_on = ray.get(placed, timeout=60)
        finally:
            ray.shutdown()
    assert len(nodes) == 2 and len(set(ran_on)) == 2 and ran_on == nodes
    assert cluster.alive() == []
    for pid in started:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def jobs_cluster():
    if not has_jobs_api():
        pytest.skip("the Ray Jobs API needs the dashboard: pip install 'ray[default]==2.60.0'")
    with LocalRayCluster(workers=0, head_cpus=1) as cluster, cluster_auth(cluster):
        yield cluster
    assert cluster.alive() == []


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_submit_entrypoint_runs_in_the_uploaded_folder_with_this_package(jobs_cluster, tmp_path):
    (tmp_path / "marker.txt").write_text("shipped")
    entrypoint = "python -c " + shlex.quote(
        "import dcn_ray; print(open('marker.txt').read()); print('package at', dcn_ray.__file__)"
    )
    runtime_env = {"working_dir": str(tmp_path), "py_modules": [str(submit.PACKAGE_DIR)]}
    job_id = submit.submit_entrypoint(jobs_cluster.dashboard_url, entrypoint, runtime_env)
    lines: list[str] = []
    assert submit.follow_logs(jobs_cluster.dashboard_url, job_id, lines.append) == "SUCCEEDED"
    assert "shipped" in lines
    # The cluster imports the uploaded copy of dcn_ray, not an installed one.
    shipped = [line for line in lines if line.startswith("package at")]
    assert shipped and "runtime_resources" in shipped[0] and str(REPO) not in shipped[0]
    assert submit.job_status(jobs_cluster.dashboard_url, job_id) == "SUCCEEDED"
    assert "shipped" in submit.job_logs(jobs_cluster.dashboard_url, job_id)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_failing_job_reports_failed(jobs_cluster):
    job_id = submit.submit_entrypoint(jobs_cluster.dashboard_url, "python -c 'import sys; print(\"bye\"); sys.exit(3)'")
    lines: list[str] = []
    assert submit.follow_logs(jobs_cluster.dashboard_url, job_id, lines.append) == "FAILED"
    assert "bye" in lines


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_unknown_job_and_wrong_token_are_input_errors(jobs_cluster):
    with pytest.raises(InputError, match="raysubmit_doesnotexist"):
        submit.job_status(jobs_cluster.dashboard_url, "raysubmit_doesnotexist")
    with ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        with pytest.raises(InputError, match="RAY_AUTH_TOKEN"):
            submit.job_status(jobs_cluster.dashboard_url, "raysubmit_doesnotexist")
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == jobs_cluster.auth_env["RAY_AUTH_TOKEN_PATH"]
