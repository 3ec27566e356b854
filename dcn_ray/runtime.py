"""Where work runs: the Ray session (a cluster, or a local Ray on 127.0.0.1), its nodes, trial resources."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dcn_ray.errors import InputError, first_line

if TYPE_CHECKING:
    from dcn_ray.job.config import JobConfig

log = logging.getLogger(__name__)

#: Ray's single-machine mode (its default on macOS and Windows): the node takes the loopback
#: address and every Ray server listens there. Read once, when Ray is imported.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: How long connecting to a Ray cluster may take before dcn-ray gives up with one line.
CONNECT_TIMEOUT_S = 30.0


def keep_local_ray_on_loopback(address: str | None) -> None:
    """Before Ray is imported: a local Ray started later listens on 127.0.0.1 only.

    Without it, Ray 2.60 on Linux re-addresses even a 127.0.0.1 node to the machine's routable
    address and serves on every interface. Connecting to a cluster (``address`` or RAY_ADDRESS)
    needs Ray's normal mode, so nothing changes then; an explicit setting of the variable wins.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return
    if "ray" in sys.modules:
        log.debug("Ray is already imported: the local Ray keeps Ray's own address choice")
        return
    os.environ.setdefault(SINGLE_MACHINE_ENV, "0")


def ray_log_level() -> int:
    """Ray's log level: $RAY_LOGGER_LEVEL (the CLI: errors only, everything with -v), else warnings."""
    level = logging.getLevelName(os.environ.get("RAY_LOGGER_LEVEL", "warning").upper())
    return level if isinstance(level, int) else logging.WARNING


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect to ``address``, or start a local Ray (no dashboard); shut down only what we started.

    Without an address (and no RAY_ADDRESS) the local Ray is always a new one: a bare ``ray.init()``
    would join any cluster that ``ray start`` left on this machine, another user's included.

    Ray 2.60 serves its gRPC ports on every interface whatever the node address; its token
    authentication, on by default, is what keeps other hosts out.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": ray_log_level(), "log_to_driver": False}
    check_answers(address or os.environ.get("RAY_ADDRESS"))  # ray.init waits forever for a silent address
    keep = signal.getsignal(signal.SIGTERM)  # ray.init sets one that exits at once: the CLI's wins
    try:
        if address:
            ray.init(address=address, **options)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**options)
        else:  # "local": a Ray of our own, never a `ray start` cluster someone else runs on this machine
            end_orphaned_agents()
            start_watchdog()  # a SIGKILLed driver takes nothing down with it: the watchdog ends its Ray
            ray.init(address="local", include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(
            f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {first_line(error)}"
        ) from None
    if callable(keep) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, keep)
    if options["logging_level"] > logging.DEBUG:  # Tune's "Trials did not complete": dcn-ray says which failed
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ray.shutdown()


#: Ray's per-node agents, by the script in their command line; a killed driver can leave them.
RAY_AGENTS = ("dashboard/agent.py", "runtime_env/agent/main.py")


def end_orphaned_agents() -> list[int]:
    """End this user's Ray agents whose session no other process serves (their raylet is gone).

    A SIGKILLed driver takes its raylet and GCS with it, but Ray's DashboardAgent and
    RuntimeEnvAgent can stay. An agent of a live Ray (any user's, any cluster) shares its
    ``--session-dir`` with that Ray's raylet, and is left alone. Returns the pids ended (Linux only).
    """
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                commands[int(entry)] = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    ended = []
    for pid, command in commands.items():
        if not any(agent in command for agent in RAY_AGENTS) or "--session-dir" not in command:
            continue
        session = command.split("--session-dir", 1)[1].lstrip("= ").split(" ", 1)[0]
        served = any(
            session in other and not any(agent in other for agent in RAY_AGENTS)
            for other_pid, other in commands.items()
            if other_pid != pid
        )
        if session and not served and _own(pid):
            log.debug("ending Ray agent %d of the ended session %s", pid, session)
            try:
                os.kill(pid, signal.SIGTERM)
                ended.append(pid)
            except OSError:
                pass
    return ended


#: How often the watchdog notes the driver's processes (a process started and left within it is missed).
WATCH_INTERVAL_S = 1.0


def start_watchdog() -> None:
    """Start a process that, once this one is gone (SIGKILL included), ends every process this one
    started (a local Ray's GCS, raylet, agents and workers) that still runs. Linux only."""
    if not os.path.isdir("/proc"):
        return
    code = f"from dcn_ray.runtime import watch; watch({os.getpid()})"
    subprocess.Popen(  # its own session: a signal to the driver's group leaves it running
        [sys.executable, "-c", code], start_new_session=True, close_fds=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def watch(driver: int, interval: float = WATCH_INTERVAL_S) -> None:
    """Note the descendants of ``driver`` while it lives; then end those still running (same start time)."""
    seen: dict[int, str] = {}
    started = _start_time(driver)
    while started is not None and _start_time(driver) == started:
        for pid in _descendants(driver):
            seen.setdefault(pid, _start_time(pid) or "")
        time.sleep(interval)
    for number in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid, start in seen.items() if start and _start_time(pid) == start and pid != os.getpid()]
        for pid in alive:
            try:
                os.kill(pid, number)
            except OSError:
                pass
        if not alive:
            return
        time.sleep(2.0)


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (the start time): tells a process from a later one of the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _own(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def check_answers(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """InputError within about ``timeout`` seconds unless a Ray cluster answers at ``address``.

    ``ray.init`` retries a silent or foreign address for minutes: nothing listening, a firewall
    that drops packets, another service on the port. So the address is tried first: a TCP
    connection, then (for a GCS address, host:port) the cluster id asked of the GCS, each bounded.
    ``None``, ``auto`` and ``local`` are left to Ray.
    """
    if not address or address in ("auto", "local"):
        return
    deadline = time.monotonic() + timeout
    client = address.startswith("ray://")
    target = address[len("ray://") :] if client else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray address {address!r}: expected host:port (the head's GCS) or ray://host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(10.0, timeout)):
            pass
    except OSError as error:
        raise InputError(f"cannot reach the Ray cluster at {address}: {error.strerror or first_line(error)}") from None
    if client:
        return  # the Ray Client bounds its own connection attempts
    # In a child process: Ray's client logs its retries to stderr, and a hung one can be killed
    try:
        asked = subprocess.run(
            [sys.executable, "-c", _ASK_GCS, target],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired:
        raise InputError(
            f"no Ray cluster answers at {address} within {timeout:.0f} s "
            "(is it the head node's GCS address, host:6379, and is the cluster up?)"
        ) from None
    if asked.returncode != 0:
        reasons = [line for line in asked.stderr.splitlines() if line.strip() and not line.startswith("[")]
        reason = reasons[-1].strip() if reasons else f"exit code {asked.returncode}"
        raise InputError(f"cannot connect to the Ray cluster at {address}: {reason[:200]}")


#: Asks the GCS at argv[1] for the cluster id (what ray.init does first).
_ASK_GCS = "import sys; from ray._raylet import GcsClient; GcsClient(address=sys.argv[1]).cluster_id"


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def trial_resources(job: JobConfig, nodes: list[dict[str, float]], write: Callable[[str], None]) -> tuple[float, int]:
    """The GPUs per trial on this cluster and how many trials may run at once.

    No GPU anywhere: trials run on CPU (gpu 0), and the user is told. Resources no node
    can provide are refused instead of pending forever.
    """
    wanted = job.sweep.resources
    gpu = wanted.gpu
    if gpu > 0 and not any(node.get("GPU", 0) > 0 for node in nodes):
        write(f"No GPU in the cluster: trials run on CPU (sweep.resources.gpu {gpu:g} -> 0).")
        gpu = 0.0
    fits = [node for node in nodes if node.get("CPU", 0) >= wanted.cpu and node.get("GPU", 0) >= gpu]
    if not fits:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise InputError(
            f"no node can provide sweep.resources (gpu {gpu:g}, cpu {wanted.cpu:g}); "
            f"the largest node has {biggest.get('GPU', 0):g} GPUs and {biggest.get('CPU', 0):g} CPUs"
        )
    slots = sum(min(int(n.get("CPU", 0) // wanted.cpu), int(n.get("GPU", 0) // gpu) if gpu else 10**6) for n in fits)
    return gpu, max(1, job.sweep.max_concurrent or slots)


def check_resources(job: JobConfig, address: str | None) -> tuple[str, float, int]:
    """Whether the cluster (or this machine) can run the trials: a one-line summary, the GPU share a
    trial gets there (0: trials run on CPU) and how many run at a time."""
    notes: list[str] = []
    if address:
        with ray_session(address):
            nodes = alive_nodes()
    else:
        import torch

        nodes = [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]
    gpu, slots = trial_resources(job, nodes, notes.append)
    where = f"the cluster at {address}" if address else "this machine"
    summary = " ".join(
        notes
        + [f"resources: {slots} trial(s) at a time on {where} (gpu {gpu:g}, cpu {job.sweep.resources.cpu:g} each)"]
    )
    return summary, gpu, slots
