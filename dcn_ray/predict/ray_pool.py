"""Predict on many GPUs: a pool of Ray actors, one GPU each (CPU where the cluster has none).

Each actor rebuilds the model from its payload and holds one predictor of
:mod:`~dcn_ray.predict.engine` (slices, or blocks that it writes into the store itself). Work
items go to the least busy actor, at most ``PER_WORKER`` waiting per actor, and results come back
in input order, so the driver holds a bounded number of items whatever the volume's depth. (Ray's
``ActorPool.map`` submits every value at once, which would read the whole stack.) The pool imports
the engine, never a driver; the drivers (:mod:`~dcn_ray.predict.stack`,
:mod:`~dcn_ray.predict.volume`) hand it a predictor builder and the work.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dcn_ray.core import checkpoint
from dcn_ray.errors import InputError
from dcn_ray.runtime import alive_nodes, ray_session

log = logging.getLogger(__name__)

#: Items queued per actor: one computing, one waiting, so no actor idles between items.
PER_WORKER = 2
#: What an actor needs of a checkpoint payload to rebuild its model.
MODEL_KEYS = ("model_family", "model_kwargs", "context", "weights")

#: A predictor built on the actor from the model: ``item -> result`` (engine.SlicePredictor, BlockPredictor).
Predictor = Callable[[Any], Any]
#: Maps items to (result, name of the actor that computed it), in input order.
PoolMap = Callable[[Iterable[Any]], Iterator[tuple[Any, str]]]


class PredictorWorker:
    """A Ray actor holding ``build(model)`` on its device; returns each item's result and its name."""

    def __init__(self, model: dict[str, Any], build: Callable[[Any], Predictor]) -> None:
        import ray

        self.predict = build(checkpoint.model_from_payload(model))
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        self.name = f"pid {os.getpid()}" + (f" gpu {gpus}" if gpus else "") + f" {self.predict.device.type}"

    def run(self, item: Any) -> tuple[Any, str]:
        return self.predict(item), self.name


def actor_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint payload the actors rebuild the model from (its family included)."""
    return {key: payload[key] for key in MODEL_KEYS if key in payload}


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
def actor_pool(
    payload: dict[str, Any],
    build: Callable[[Any], Predictor],
    *,
    device: str | None,
    workers: int | None,
    address: str | None,
) -> Iterator[PoolMap]:
    """Start the actors (and Ray, if it is not running) for the block; kill them by handle after it."""
    import ray

    with ray_session(address):
        count, gpus = worker_plan(alive_nodes(), workers, device)
        model = ray.put(actor_payload(payload))
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(PredictorWorker)
        actors = [actor.remote(model, build) for _ in range(count)]
        log.debug("predicting on %d Ray worker(s), %s", count, "one GPU each" if gpus else "on CPU")
        try:
            yield lambda items: ordered_map(actors, items)
        finally:
            for handle in actors:
                ray.kill(handle)


def ordered_map(actors: list, items: Iterable[Any], per_worker: int = PER_WORKER) -> Iterator[tuple[Any, str]]:
    """``actor.run`` over ``items``, results in input order, at most ``per_worker`` per actor in flight.

    An InputError raised on an actor is raised here as it is (one line for the user, exit 2).
    """
    import ray

    pending: deque[tuple[int, Any]] = deque()
    busy = [0] * len(actors)
    remaining = iter(items)
    done = object()

    def submit() -> None:
        item = next(remaining, done)
        if item is done:
            return
        index = min(range(len(actors)), key=busy.__getitem__)
        busy[index] += 1
        pending.append((index, actors[index].run.remote(item)))

    for _ in range(per_worker * len(actors)):
        submit()
    while pending:
        index, ref = pending.popleft()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, InputError):
                raise error.cause from None
            raise
        busy[index] -= 1
        submit()
        yield result
