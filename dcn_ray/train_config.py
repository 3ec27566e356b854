"""The ``train`` section of a job: its keys, what they mean, their validation and the ``paper`` preset.

Split out of :mod:`dcn_ray.config` (which re-exports :class:`TrainConfig`) because the training
options have their own purpose: how one configuration is trained. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dcn_ray.errors import InputError

#: Loss functions (dcn_ray.core.loss.make_loss).
LOSSES = ("ce", "weighted_ce", "ce_dice")
#: Learning-rate schedules (dcn_ray.core.schedule.lr_factor).
SCHEDULES = ("constant", "cosine", "poly")
OPTIMIZERS = ("adam", "adamw", "sgd")
TRANSFORMS = ("paper6", "dihedral8")

#: ``train.preset: paper``: the training of the Table 1 paper (Takaya et al.) and of dcn-ray before
#: issue 17. Keys given in the job file win over the preset; the preset only replaces the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "loss": "ce",
        "schedule": "constant",
        "warmup": 0,
        "foreground_crops": 0.0,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "transforms": "paper6",
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """How one configuration trains. The defaults are the paper's training: the sparse-foreground
    options (loss, schedule, foreground_crops) did not beat it in docs/results/training-defaults.md."""

    steps: int = 2000
    batch_size: int = 8
    crop: int = 256
    #: Peak learning rate (after warmup; the schedule scales it).
    lr: float = 1e-3
    #: "adam" (weight_decay as an L2 term in the gradient, the DCN paper's form), "adamw" (AdamW:
    #: decoupled weight decay, lr x weight_decay x weight per step) or "sgd" (with momentum).
    optimizer: str = "adam"
    momentum: float = 0.9
    #: Weight decay of every weight (see optimizer for its form); 0 = none.
    weight_decay: float = 0.0
    #: "ce": the paper's cross-entropy of the fused output plus the decaying branch terms;
    #: "weighted_ce": the same with class weights 1 / (2 f) for the foreground and 1 / (2 (1 - f))
    #: for the background, f = foreground fraction of the training split (a pixel weighs 1 on
    #: average); "ce_dice": "ce" plus the soft Dice loss of the fused output's foreground.
    loss: str = "ce"
    #: Learning-rate schedule after warmup: "constant"; "cosine" (half a cosine from lr towards 0
    #: over the remaining steps); "poly" (lr (1 - p)^0.9, p = fraction of those steps done; nnU-Net's).
    schedule: str = "constant"
    #: Steps of linear warmup: step i < warmup trains at lr (i + 1) / warmup; 0 = none.
    warmup: int = 0
    #: Fraction of training crops centred on a foreground pixel (nnU-Net's oversampling: 0.33);
    #: the others are uniform over the slices. 0 = all uniform (the paper's).
    foreground_crops: float = 0.0
    eval_every: int = 200
    #: Auxiliary branch-loss weight, decaying from aux_start to aux_end.
    aux_start: float = 1.0
    aux_end: float = 0.01
    #: "paper6": the paper's 6 transforms; "dihedral8": all 8 dihedral ones.
    transforms: str = "paper6"
    seed: int = 0
    #: torch intra-op threads in a trial (None: torch's default).
    threads: int | None = None
    #: torch.compile the model (GPU runs; see bench/gpu_train.py).
    compile: bool = False
    #: "paper": the defaults of every key above become the Table 1 paper's training (ce, constant
    #: lr, uniform crops, Adam without weight decay); keys given beside it still win. None: dcn-ray's.
    preset: str | None = None


def apply_preset(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` job mapping with ``train.preset``'s values filled in where ``train`` does not set them."""
    train = raw.get("train")
    if not isinstance(train, Mapping) or train.get("preset") is None:
        return raw
    preset = train["preset"]
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InputError(f"train.preset must be one of {', '.join(sorted(PRESETS))} or null, got {preset!r}")
    return {**raw, "train": {**PRESETS[preset], **train}}


def validate_train(train: TrainConfig, need: Callable[[bool, str], None]) -> None:
    """Check every ``train`` key; ``need(condition, message)`` raises when a condition fails."""

    def one_of(key: str, choices: tuple[str, ...]) -> None:
        value = getattr(train, key)
        need(value in choices, f"train.{key} must be one of {', '.join(choices)}, got {value!r}")

    need(train.steps >= 1, f"train.steps must be >= 1, got {train.steps}")
    need(train.batch_size >= 1, f"train.batch_size must be >= 1, got {train.batch_size}")
    need(train.crop >= 8 and train.crop % 8 == 0, f"train.crop must be a positive multiple of 8, got {train.crop}")
    need(math.isfinite(train.lr) and train.lr > 0, f"train.lr must be a finite number > 0, got {train.lr}")
    need(
        math.isfinite(train.weight_decay) and train.weight_decay >= 0,
        f"train.weight_decay must be a finite number >= 0, got {train.weight_decay}",
    )
    need(0 <= train.momentum < 1, f"train.momentum must be in [0, 1), got {train.momentum}")
    need(0 <= train.seed < 2**63, f"train.seed {train.seed} is out of range (0 to 2**63 - 1)")
    one_of("optimizer", OPTIMIZERS)
    one_of("loss", LOSSES)
    one_of("schedule", SCHEDULES)
    one_of("transforms", TRANSFORMS)
    need(
        0 <= train.warmup < train.steps,
        f"train.warmup must be >= 0 and less than train.steps ({train.steps}), got {train.warmup}",
    )
    need(
        0.0 <= train.foreground_crops <= 1.0,
        f"train.foreground_crops must be a fraction in [0, 1], got {train.foreground_crops}",
    )
    need(1 <= train.eval_every, f"train.eval_every must be >= 1, got {train.eval_every}")
    need(
        0 < train.aux_end <= train.aux_start and math.isfinite(train.aux_start),
        f"train.aux_end must be in (0, train.aux_start] and both finite, got {train.aux_end} and {train.aux_start}",
    )
    need(train.threads is None or train.threads >= 1, f"train.threads must be >= 1, got {train.threads}")
    need(train.preset is None or train.preset in PRESETS, f"train.preset must be one of {sorted(PRESETS)}")
