"""Shared fixtures: a synthetic stack, a job on it, a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the fast lane
# `python -m pytest -m "not integration"` starts no Ray and no MLflow server: these checks fail a test
# that would, unless it carries @pytest.mark.integration.


def pytest_collection_modifyitems(items) -> None:
    unmarked = [
        i.nodeid for i in items if "mlflow_server" in i.fixturenames and not i.get_closest_marker("integration")
    ]
    if unmarked:
        raise pytest.UsageError(f"tests using mlflow_server need @pytest.mark.integration: {unmarked}")


@contextlib.contextmanager
def _ray_refused(item):
    """``ray.init`` fails the test while it runs, if ``item`` lacks the integration marker."""
    ray = sys.modules.get("ray")
    if ray is None or not hasattr(ray, "init") or item.get_closest_marker("integration"):
        yield
        return
    real = ray.init

    def refuse(*args, **kwargs):
        pytest.fail(f"{item.nodeid} starts Ray: mark it @pytest.mark.integration", pytrace=False)

    ray.init = refuse
    try:
        yield
    finally:
        ray.init = real


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _ray_refused(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _ray_refused(item):
        return (yield)


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test, as on the CI machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def run_cli(capsys, args: list) -> tuple[int | str | None, str, str]:
    """Exit code, stdout and stderr of ``dcn-ray ARGS`` run in this process."""
    from dcn_ray.cli import main

    try:
        main([str(a) for a in args])
        code: int | str | None = 0
    except SystemExit as done:
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def synthetic_stack(tmp_path_factory) -> tuple[Path, Path]:
    """A small learnable EM-like stack: 12 slices of 128 x 128."""
    from dcn_ray.io.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synthetic"), slices=12, size=128, seed=1)


def small_job(images: Path, labels: Path, **sections) -> dict:
    """A job dict for a narrow DCN on small crops; sections override whole sections."""
    job = {
        "name": "test",
        "data": {"images": str(images), "labels": str(labels), "split": {"train": "0:10", "val": "10:12"}},
        "model": {"width": 4},
        "train": {"steps": 12, "batch_size": 2, "crop": 32, "lr": 0.003, "eval_every": 6, "threads": 1},
        "sweep": {"kernels": [[4, 8, 16], [2, 8, 16], [6, 8, 16], [4, 8, 12]], "resources": {"gpu": 1, "cpu": 1}},
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return job


def child_runs(uri: str, experiment: str) -> list:
    """The trials' MLflow runs (children of the sweep's parent run) in ``experiment``; none before it exists."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def train_job(job, kernels, dataset, **options):
    """``core.train.train`` of a job's model and train sections, the job recorded in its checkpoints
    (as a sweep trial calls it)."""
    from dcn_ray.core.train import train

    model = job.model if kernels is None else job.model.with_keys(kernels=tuple(kernels))  # model.kernels
    return train(model, job.train, dataset, provenance=job.to_dict(), **options)


def sweep_on_local_ray(raw: dict, storage: Path):
    """Run the job ``raw`` as a sweep on a fresh local Ray (2 CPUs), shut down afterwards; on the
    module's Ray where a test asked for ``module_ray`` (one start-up for the module's sweeps)."""
    import ray
    import yaml

    from dcn_ray.job.config import job_from_dict
    from dcn_ray.tune.sweep import run_sweep

    own = not ray.is_initialized()
    if own:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        return run_sweep(
            job_from_dict(raw),
            job_text=yaml.safe_dump(raw),
            storage=str(storage),
            address=None,
            write=lambda line: None,
        )
    finally:
        if own:
            ray.shutdown()


@pytest.fixture(scope="module")
def module_ray():
    """A local Ray (2 CPUs) for the sweeps of one module, shut down after its last test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts."""

    def __init__(self, folder: Path, store: Path | None = None):
        self.folder = folder
        self.store = store  # an empty MLflow store to start from (``empty_store``): no migrations at start
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.store is not None and not (self.folder / "mlflow.db").exists():
            sqlite_copy(self.store, self.folder)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            "--workers",
            "1",
        ]
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No job runner: MLflow 3's server otherwise starts a Huey runner and its consumers (GenAI
            # scorer jobs), six more Python processes per server that dcn-ray never uses.
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        # Ends the server's process group if this test process dies without stopping it (SIGKILL)
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(self.process.pid)], start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not start within 90 s")

    def stop(self) -> None:
        """End the server and the workers it started (its own process group, by its pid)."""
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.kill()
            self.watchdog.wait(timeout=10)
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)


#: Run beside a server: when the test process (argv[1]) is gone, end the server's group (argv[2]).
WATCHDOG = """
import os, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(1)
try:
    os.killpg(group, 15)
    time.sleep(10)
    os.killpg(group, 9)
except ProcessLookupError:
    pass
"""


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store whose tables MLflow made once for the session.

    A new store costs MLflow's schema migrations: 1-2 s here when the machine is quiet, 5-8 s when it is
    loaded (each migration commits, and waits for the disk), against ~0.1 s to copy:
    tests that only need a store of their own take a copy (``sqlite_copy``); tests of how dcn-ray
    creates the store (the default ./mlflow.db, the README's commands) still let MLflow make it.
    """
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    with contextlib.chdir(path.parent):  # MLflow's Default experiment points at ./mlruns: here, not a checkout
        MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def sqlite_copy(empty_store: Path, folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a copy of ``empty_store`` at ``folder / name``: a store of the test's own."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / name)
    return f"sqlite:///{folder / name}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, empty_store):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), empty_store).start()
    try:
        yield server
    finally:  # also when the run is interrupted
        server.stop()
