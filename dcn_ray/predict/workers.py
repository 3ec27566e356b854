"""Predict slices on many GPUs: Ray actors, one GPU each (CPU where the cluster has none).

Slices go to the least busy actor, at most ``PER_WORKER`` waiting per actor, and come back in
order, so the driver holds a bounded number of slices whatever the stack's depth. (Ray's
``ActorPool.map`` submits every value at once, which would read the whole stack.)
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from dcn_ray.core import checkpoint
from dcn_ray.errors import InputError
from dcn_ray.predict.stack import PredictOptions, SliceMapper, SlicePredictor
from dcn_ray.runtime import alive_nodes, ray_session

log = logging.getLogger(__name__)

#: Slices queued per actor: one computing, one waiting, so no actor idles between slices.
PER_WORKER = 2


class SliceWorker:
    """A Ray actor holding the model on its device; returns each slice's probability and its name."""

    def __init__(self, model: dict[str, Any], options: PredictOptions) -> None:
        import ray

        self.predict = SlicePredictor(checkpoint.model_from_payload(model), options)
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        self.name = f"pid {os.getpid()}" + (f" gpu {gpus}" if gpus else "") + f" {self.predict.device.type}"

    def run(self, image: np.ndarray) -> tuple[np.ndarray, str]:
        return self.predict(image), self.name


def worker_plan(nodes: list[dict[str, float]], workers: int | None, device: str | None) -> tuple[int, int]:
    """(actors, GPUs per actor): one GPU each when the cluster has GPUs (and not --device cpu).

    Without ``workers``: one actor per GPU, or one. More actors than the cluster can hold: InputError.
    """
    gpus = int(sum(node.get("GPU", 0) for node in nodes))
    cpus = int(sum(node.get("CPU", 0) for node in nodes))
    per_actor = 1 if gpus and device != "cpu" else 0
    count = workers if workers is not None else max(1, gpus if per_actor else 1)
    if per_actor and count > gpus:
        raise InputError(f"--workers {count}: the Ray cluster has only {gpus} GPU(s)")
    if count > cpus:
        raise InputError(f"--workers {count}: the Ray cluster has only {cpus} CPU(s)")
    if device == "cuda" and not per_actor:
        raise InputError("--device cuda: the Ray cluster has no GPU")
    return count, per_actor


@contextmanager
def ray_mapper(
    payload: dict[str, Any], options: PredictOptions, *, workers: int | None, address: str | None
) -> Iterator[SliceMapper]:
    """Start the actors (and Ray, if it is not running) for the duration of the block."""
    import ray

    with ray_session(address):
        count, gpus = worker_plan(alive_nodes(), workers, options.device)
        model = ray.put({"model_kwargs": payload["model_kwargs"], "weights": payload["weights"]})
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(SliceWorker)
        actors = [actor.remote(model, options) for _ in range(count)]
        log.info("predicting on %d Ray worker(s), %s", count, "one GPU each" if gpus else "on CPU")
        try:
            yield lambda slices: ordered_map(actors, slices)
        finally:
            for handle in actors:
                ray.kill(handle)


def ordered_map(
    actors: list, slices: Iterable[np.ndarray], per_worker: int = PER_WORKER
) -> Iterator[tuple[np.ndarray, str]]:
    """``actor.run`` over ``slices``, results in input order, at most ``per_worker`` per actor in flight."""
    import ray

    pending: deque[tuple[int, Any]] = deque()
    busy = [0] * len(actors)
    remaining = iter(slices)

    def submit() -> None:
        image = next(remaining, None)
        if image is None:
            return
        index = min(range(len(actors)), key=busy.__getitem__)
        busy[index] += 1
        pending.append((index, actors[index].run.remote(image)))

    for _ in range(per_worker * len(actors)):
        submit()
    while pending:
        index, ref = pending.popleft()
        result = ray.get(ref)
        busy[index] -= 1
        submit()
        yield result
