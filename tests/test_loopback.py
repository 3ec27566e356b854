"""The local Ray that dcn-ray starts itself listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# A fresh process: the choice must be made before Ray is imported, as the CLI does.
PROBE = """
import json, os, subprocess
from dcn_ray.runtime import keep_local_ray_on_loopback
keep_local_ray_on_loopback(None)
from dcn_ray.runtime import ray_session
import ray
with ray_session(None):
    address = ray.nodes()[0]["NodeManagerAddress"]
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines()
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            pass
    ours, grown = {os.getpid()}, True
    while grown:  # the processes this probe's Ray started: another Ray on the machine is not ours
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours, grown = ours | more, bool(more)
    print(json.dumps({"address": address, "listening": listening, "ours": sorted(ours)}))
"""


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_local_ray_of_dcn_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, env=env)
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["address"] == "127.0.0.1"
    ours = {f"pid={pid}," for pid in seen["ours"]}
    ray_sockets = [
        line
        for line in seen["listening"]
        if ('"raylet"' in line or '"gcs_server"' in line) and any(pid in line for pid in ours)
    ]
    assert ray_sockets, "the probe saw Ray's servers listening"
    for line in ray_sockets:
        assert line.split()[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line
