"""A real multi-node Ray cluster on 127.0.0.1 for tests, started by ``cluster/local-cluster.sh``.

    with LocalRayCluster(workers=1) as cluster, cluster_auth(cluster):
        ray.init(address=cluster.address)
        ...
        ray.shutdown()
    # every process the cluster started is gone here

Each node is one ``ray start --block`` in its own session; the script records their pids and
``stop`` terminates exactly those. The cluster uses token authentication with its own token;
``cluster_auth`` points this process at it (and back again afterwards).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "cluster" / "local-cluster.sh"


class LocalRayCluster:
    """Head + ``workers`` worker nodes on this machine; stops exactly what it started on exit."""

    def __init__(
        self,
        workers: int = 1,
        *,
        head_cpus: int = 1,
        head_gpus: int = 0,
        worker_cpus: int = 1,
        worker_gpus: int = 0,
        timeout_s: int = 60,
    ):
        self.options = [
            "--workers",
            str(workers),
            "--head-cpus",
            str(head_cpus),
            "--head-gpus",
            str(head_gpus),
            "--worker-cpus",
            str(worker_cpus),
            "--worker-gpus",
            str(worker_gpus),
            "--timeout",
            str(timeout_s),
        ]
        self.timeout_s = timeout_s
        self.folder: Path | None = None
        self.address = ""  # "127.0.0.1:PORT", for ray.init and `dcn-ray sweep --address`
        self.dashboard_url = ""  # "http://127.0.0.1:PORT", for the Jobs API and `dcn-ray submit`
        self.pids: dict[str, int] = {}  # node name -> pid of its `ray start --block`

    @property
    def auth_env(self) -> dict[str, str]:
        """The environment a client needs to talk to this cluster."""
        assert self.folder is not None, "the cluster is not started"
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.folder / "auth_token")}

    def __enter__(self) -> LocalRayCluster:
        # Short, in /tmp: Ray's unix socket paths (under the folder) must stay below ~107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="dcnray-", dir="/tmp"))
        try:
            self._script("start", *self.options, timeout=self.timeout_s * 4)
        except BaseException:
            self._stop()
            raise
        self.address = (self.folder / "address").read_text().strip()
        dashboard = self.folder / "dashboard_url"  # absent without ray[default]
        self.dashboard_url = dashboard.read_text().strip() if dashboard.exists() else ""
        for line in (self.folder / "pids").read_text().splitlines():
            name, pid = line.split()
            self.pids[name] = int(pid)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop()

    def _stop(self) -> None:
        """Stop every node (SIGKILL for leftovers after timeout_s), then remove the folder."""
        assert self.folder is not None
        try:
            self._script("stop", "--timeout", str(self.timeout_s), timeout=2 * self.timeout_s + 30)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def alive(self) -> list[int]:
        """Pids of the processes still running in the nodes' sessions (the launchers and all they started)."""
        sessions = set(self.pids.values())
        table = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
        rows = (line.split() for line in table.splitlines() if line.strip())
        return [int(pid) for pid, sid, stat in rows if int(sid) in sessions and not stat.startswith("Z")]

    def _script(self, command: str, *options: str, timeout: float) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), command, "--dir", str(self.folder), *options],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {command} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout


@contextmanager
def cluster_auth(cluster: LocalRayCluster) -> Iterator[None]:
    """Use the cluster's token in this process (ray.init, JobSubmissionClient); restore afterwards."""
    with ray_auth(cluster.auth_env):
        yield


@contextmanager
def ray_auth(env: Mapping[str, str]) -> Iterator[None]:
    """Set Ray's authentication variables (RAY_AUTH_*) to ``env`` in this process; restore afterwards.

    Ray caches the authentication mode and token per process, so both caches are refreshed
    when the variables change (as Ray does when it turns token authentication on itself).
    """
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    saved = {key: os.environ.get(key) for key in keys}
    for key in keys:
        os.environ.pop(key, None)
    os.environ.update(env)
    _refresh_ray_auth()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
