"""Learning-rate schedules (job key ``train.schedule``) with an optional linear warmup (``train.warmup``).

A schedule is a pure function of the step, so resuming at step ``s`` continues it exactly: the
training loop sets every parameter group's rate from :func:`lr_factor` before each step, and there
is no scheduler state to save.

Step ``i`` (0-based) of ``total`` with ``warmup`` steps trains at ``lr * lr_factor(i, ...)``:

- warmup, ``i < warmup``: ``(i + 1) / warmup`` (the last warmup step reaches the full rate);
- then, with ``p = (i - warmup) / (total - warmup)`` in [0, 1):
  ``constant`` 1; ``cosine`` ``(1 + cos(pi p)) / 2``; ``poly`` ``(1 - p) ** 0.9`` (nnU-Net's).

No step trains at a rate of 0: the last step's ``p`` is ``1 - 1 / (total - warmup)``.
"""

from __future__ import annotations

import math

import torch

from dcn_ray.job.train_config import SCHEDULES

#: The exponent of the ``poly`` schedule (nnU-Net's).
POLY_EXPONENT = 0.9


def lr_factor(step: int, total: int, *, schedule: str = "constant", warmup: int = 0) -> float:
    """The multiple of the peak learning rate that step ``step`` (0-based) of ``total`` trains at."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if total < 1 or not 0 <= warmup < total:
        raise ValueError(f"need total >= 1 and 0 <= warmup < total, got total={total}, warmup={warmup}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / (total - warmup), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** POLY_EXPONENT
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
