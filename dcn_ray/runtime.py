"""Where work runs: the Ray session (a cluster, or a local Ray on 127.0.0.1), its nodes, trial resources."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dcn_ray.errors import InputError, first_line

if TYPE_CHECKING:
    from dcn_ray.config import JobConfig

log = logging.getLogger(__name__)

#: Ray's single-machine mode (its default on macOS and Windows): the node takes the loopback
#: address and every Ray server listens there. Read once, when Ray is imported.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect to ``address``, or start a local Ray (no dashboard); shut down only what we started.

    Ray 2.60 serves its gRPC ports on every interface whatever the node address; its token
    authentication, on by default, is what keeps other hosts out.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **options)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**options)
        else:
            ray.init(include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(
            f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {first_line(error)}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


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


def check_resources(job: JobConfig, address: str | None) -> str:
    """Whether the cluster (or this machine) can run the trials; a one-line summary."""
    notes: list[str] = []
    if address:
        with ray_session(address):
            nodes = alive_nodes()
    else:
        import torch

        nodes = [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]
    gpu, slots = trial_resources(job, nodes, notes.append)
    where = f"the cluster at {address}" if address else "this machine"
    return " ".join(
        notes
        + [f"resources: {slots} trial(s) at a time on {where} (gpu {gpu:g}, cpu {job.sweep.resources.cpu:g} each)"]
    )
