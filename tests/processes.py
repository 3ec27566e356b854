"""Process helpers for fault tests: find what a process started, end exactly those (by pid)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    parents = {int(p.name): _parent_of(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and ") Z" not in stat.read_text()


def kill_all(pids: list[int], sig: int = signal.SIGKILL, timeout: float = 20.0) -> None:
    """Signal each pid (they are ours: started by the process under test) and wait for them to go."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)


class SweepDriver:
    """``dcn-ray sweep JOB --storage STORAGE`` in a process of its own, for fault tests.

    ``kill()`` SIGKILLs the driver and then the local Ray it started (a killed driver leaves
    those behind); leaving the ``with`` block does the same if the driver is still running.
    """

    def __init__(self, job: dict, folder: Path, storage: Path):
        import yaml

        self.job_file = folder / "job.yaml"
        self.job_file.write_text(yaml.safe_dump(job))
        self.command = [sys.executable, "-m", "dcn_ray", "sweep", str(self.job_file), "--storage", str(storage)]
        self.folder = folder
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SweepDriver:
        # Output to files, not pipes: a pipe nobody reads until the end could fill and block the driver.
        with open(self.folder / "driver.out", "wb") as out, open(self.folder / "driver.err", "wb") as err:
            self.process = subprocess.Popen(
                self.command, cwd=self.folder, stdout=out, stderr=err, start_new_session=True
            )
        return self

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the driver to exit; its exit code and stderr."""
        self.process.wait(timeout=timeout)
        return self.process.returncode, (self.folder / "driver.err").read_text()

    def kill_once(self, condition: Callable[[], object], what: str, timeout: float = 300) -> None:
        """``kill()`` as soon as ``condition()`` holds (asked every 0.5 s); fails if the driver ends or
        ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline and self.process.poll() is None, f"no {what}"
            time.sleep(0.5)
        self.kill()

    def kill(self) -> None:
        started = descendants(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=30)
        kill_all(started)

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.kill()


def resume(name: str, storage: Path, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    """``dcn-ray resume NAME --storage STORAGE`` in a process of its own, as a user runs it after a killed driver."""
    command = [sys.executable, "-m", "dcn_ray", "resume", name, "--storage", str(storage)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
