"""Predict a volume's blocks on Ray actors that write straight into the output store.

One actor per GPU (or CPU slot, see :func:`~dcn_ray.predict.workers.worker_plan`) holds the model;
the driver hands each actor block descriptions (a few slices of numbers), at most ``PER_WORKER``
waiting per actor, and gets back only (voxels, who): the data never passes through the driver.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from dcn_ray.core import checkpoint
from dcn_ray.errors import InputError
from dcn_ray.io.omezarr import OutputStore
from dcn_ray.predict.blocks import Block
from dcn_ray.predict.volume import BlockPredictor, VolumePlan
from dcn_ray.predict.workers import worker_plan
from dcn_ray.runtime import alive_nodes, ray_session

log = logging.getLogger(__name__)

#: Blocks queued per actor: one computing, one waiting.
PER_WORKER = 2


class BlockWorker:
    """A Ray actor holding the model on its device; predicts and writes the blocks it is given."""

    def __init__(self, model: dict[str, Any], plan: VolumePlan, store: OutputStore) -> None:
        import ray

        self.predict = BlockPredictor(checkpoint.model_from_payload(model), plan, store)
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        device = self.predict.predict.device.type
        self.name = f"pid {os.getpid()}" + (f" gpu {gpus}" if gpus else "") + f" {device}"

    def run(self, block: Block) -> tuple[int, str]:
        return self.predict(block), self.name


def ray_blocks(
    payload: dict[str, Any],
    plan: VolumePlan,
    store: OutputStore,
    todo: list[Block],
    *,
    workers: int | None,
    address: str | None,
) -> Iterator[tuple[int, str]]:
    """(voxels, who) of each block as it finishes; starts the actors (and Ray, if not running)."""
    import ray

    with ray_session(address):
        count, gpus = worker_plan(alive_nodes(), workers, plan.options.device)
        model = ray.put({"model_kwargs": payload["model_kwargs"], "weights": payload["weights"]})
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(BlockWorker)
        actors = [actor.remote(model, plan, store) for _ in range(count)]
        log.info("predicting %d block(s) on %d Ray worker(s), %s", len(todo), count, "one GPU each" if gpus else "CPU")
        try:
            yield from _spread(actors, todo)
        finally:
            for handle in actors:
                ray.kill(handle)


def _spread(actors: list, todo: list[Block]) -> Iterator[tuple[int, str]]:
    """Keep ``PER_WORKER`` blocks queued on each actor; yield results in the order they finish."""
    import ray

    remaining = iter(todo)
    owner: dict[Any, int] = {}

    def submit(index: int) -> None:
        block = next(remaining, None)
        if block is not None:
            owner[actors[index].run.remote(block)] = index

    for index in range(len(actors)):
        for _ in range(PER_WORKER):
            submit(index)
    while owner:
        ready, _ = ray.wait(list(owner), num_returns=1)
        index = owner.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, InputError):
                raise error.cause from None
            raise
        submit(index)
        yield result
