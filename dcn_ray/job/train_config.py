"""The ``train`` section of a job: its keys, what they mean, their validation and its presets.

Split out of :mod:`dcn_ray.job.config` (which re-exports :class:`TrainConfig`) because the training
options have their own purpose: how one configuration is trained. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

#: Loss functions (dcn_ray.core.loss.make_loss).
LOSSES = ("ce", "weighted_ce", "ce_dice")
#: Learning-rate schedules (dcn_ray.core.schedule.lr_factor).
SCHEDULES = ("constant", "cosine", "poly")
OPTIMIZERS = ("adam", "adamw", "sgd")
TRANSFORMS = ("paper6", "dihedral8")

#: The keys a preset decides. Left out of a job (None), they take the values of the job's preset.
PRESET_KEYS = ("loss", "schedule", "warmup", "foreground_crops", "optimizer", "weight_decay", "transforms")
#: ``train.preset``: ``paper`` is the training of the Table 1 paper (Takaya et al.); ``sparse`` the recipe
#: that trains a sparse foreground better (docs/results/sparse-training.md); ``auto`` (the default)
#: picks between them by the training split's foreground fraction. Keys given in the job win over it.
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
    "sparse": {
        "loss": "ce_dice",
        "schedule": "cosine",
        "warmup": 20,  # at most a tenth of train.steps (resolve_training)
        "foreground_crops": 0.5,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "transforms": "paper6",
    },
}
AUTO = "auto"
#: ``auto`` trains with ``sparse`` below this foreground fraction of the training split, ``paper``
#: from it on (docs/results/sparse-training.md says where it comes from).
SPARSE_BELOW = 0.30


@dataclass(frozen=True)
class TrainConfig:
    """How one configuration trains. The keys of PRESET_KEYS default to None: the preset's value."""

    steps: int = 2000
    batch_size: int = 8
    crop: int = 256
    #: Peak learning rate (after warmup; the schedule scales it).
    lr: float = 1e-3
    #: "adam" (weight_decay as an L2 term in the gradient, the DCN paper's form), "adamw" (AdamW:
    #: decoupled weight decay, lr x weight_decay x weight per step) or "sgd" (with momentum).
    optimizer: str | None = None
    momentum: float = 0.9
    #: Weight decay of every weight (see optimizer for its form); 0 = none.
    weight_decay: float | None = None
    #: "ce": the paper's cross-entropy of the fused output plus the decaying branch terms;
    #: "weighted_ce": the same with class weights 1 / (2 f) for the foreground and 1 / (2 (1 - f))
    #: for the background, f = foreground fraction of the training split (a pixel weighs 1 on
    #: average); "ce_dice": "ce" plus the soft Dice loss of the fused output's foreground.
    loss: str | None = None
    #: Learning-rate schedule after warmup: "constant"; "cosine" (half a cosine from lr towards 0
    #: over the remaining steps); "poly" (lr (1 - p)^0.9, p = fraction of those steps done; nnU-Net's).
    schedule: str | None = None
    #: Steps of linear warmup: step i < warmup trains at lr (i + 1) / warmup; 0 = none.
    warmup: int | None = None
    #: Fraction of training crops centred on a foreground pixel (nnU-Net's oversampling: 0.33);
    #: the others are uniform over the slices. 0 = all uniform (the paper's).
    foreground_crops: float | None = None
    eval_every: int = 200
    #: Auxiliary branch-loss weight, decaying from aux_start to aux_end.
    aux_start: float = 1.0
    aux_end: float = 0.01
    #: "paper6": the paper's 6 transforms; "dihedral8": all 8 dihedral ones.
    transforms: str | None = None
    seed: int = 0
    #: torch intra-op threads in a trial (None: torch's default).
    threads: int | None = None
    #: torch.compile the model (GPU runs; see bench/gpu_train.py).
    compile: bool = False
    #: "paper", "sparse" or "auto": where the keys of PRESET_KEYS left out come from (PRESETS).
    preset: str = AUTO

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, as a job file or a checkpoint holds it."""
        return asdict(self)

    @property
    def resolved(self) -> bool:
        """Whether every key of PRESET_KEYS has its value (``auto`` was decided, or not needed)."""
        return all(getattr(self, key) is not None for key in PRESET_KEYS)


def auto_preset(foreground_fraction: float) -> str:
    """The preset ``auto`` trains with for a training split with this foreground fraction."""
    return "sparse" if foreground_fraction < SPARSE_BELOW else "paper"


def resolve_training(train: TrainConfig, foreground_fraction: float) -> TrainConfig:
    """``train`` with every key of PRESET_KEYS it leaves out taken from its preset (``auto``: the one
    :func:`auto_preset` picks, which becomes its ``preset``). The sparse recipe's warmup is at most a
    tenth of the steps. A resolved config comes back unchanged."""
    if train.resolved:
        return train
    preset = auto_preset(foreground_fraction) if train.preset == AUTO else train.preset
    values = dict(PRESETS[preset])
    values["warmup"] = min(values["warmup"], train.steps // 10)
    missing = {key: values[key] for key in PRESET_KEYS if getattr(train, key) is None}
    return replace(train, preset=preset, **missing)


def preset_line(train: TrainConfig, foreground_fraction: float) -> str:
    """One line for the dry run and the sweep's start: which training the job gets, and why."""
    resolved = resolve_training(train, foreground_fraction)
    share = f"the training split's foreground is {_percent(foreground_fraction, SPARSE_BELOW)} %"
    if train.preset != AUTO:
        return f"training: train.preset {train.preset} ({share})"
    side = "below" if resolved.preset == "sparse" else "not below"
    return (
        f"training: train.preset auto -> {resolved.preset}: {share}, {side} {100 * SPARSE_BELOW:.0f} % "
        f"(loss {resolved.loss}, schedule {resolved.schedule}, foreground_crops {resolved.foreground_crops:g})"
    )


def _percent(fraction: float, threshold: float) -> str:
    """``fraction`` in percent with one decimal, or as many more as keep it on its side of
    ``threshold`` (29.98 % is "29.98", never "30.0" beside "below 30 %")."""
    for decimals in range(1, 7):
        text = f"{100 * fraction:.{decimals}f}"
        shown = float(text)
        if fraction == threshold or ((shown < 100 * threshold) == (fraction < threshold) and shown != 100 * threshold):
            return text
    return f"{100 * fraction:.6g}"


def validate_train(train: TrainConfig, need: Callable[[bool, str], None]) -> None:
    """Check every ``train`` key; ``need(condition, message)`` raises when a condition fails."""

    def one_of(key: str, choices: tuple[str, ...]) -> None:
        value = getattr(train, key)
        need(value in choices, f"train.{key} must be one of {', '.join(choices)}, got {value!r}")

    need(train.steps >= 1, f"train.steps must be >= 1, got {train.steps}")
    need(train.batch_size >= 1, f"train.batch_size must be >= 1, got {train.batch_size}")
    need(train.crop >= 8 and train.crop % 8 == 0, f"train.crop must be a positive multiple of 8, got {train.crop}")
    need(math.isfinite(train.lr) and train.lr > 0, f"train.lr must be a finite number > 0, got {train.lr}")
    need(0 <= train.momentum < 1, f"train.momentum must be in [0, 1), got {train.momentum}")
    need(0 <= train.seed < 2**63, f"train.seed {train.seed} is out of range (0 to 2**63 - 1)")
    need(1 <= train.eval_every, f"train.eval_every must be >= 1, got {train.eval_every}")
    need(
        0 < train.aux_end <= train.aux_start and math.isfinite(train.aux_start),
        f"train.aux_end must be in (0, train.aux_start] and both finite, got {train.aux_end} and {train.aux_start}",
    )
    need(train.threads is None or train.threads >= 1, f"train.threads must be >= 1, got {train.threads}")
    need(train.preset in (*PRESETS, AUTO), f"train.preset must be one of {', '.join([*PRESETS, AUTO])}")
    # The keys a preset decides: checked where given (a preset's own values are valid by construction).
    for key, choices in (
        ("optimizer", OPTIMIZERS),
        ("loss", LOSSES),
        ("schedule", SCHEDULES),
        ("transforms", TRANSFORMS),
    ):
        value = getattr(train, key)
        need(value is None or value in choices, f"train.{key} must be one of {', '.join(choices)}, got {value!r}")
    if train.weight_decay is not None:
        need(
            math.isfinite(train.weight_decay) and train.weight_decay >= 0,
            f"train.weight_decay must be a finite number >= 0, got {train.weight_decay}",
        )
    if train.warmup is not None:
        need(
            0 <= train.warmup < train.steps,
            f"train.warmup must be >= 0 and less than train.steps ({train.steps}), got {train.warmup}",
        )
    if train.foreground_crops is not None:
        need(
            0.0 <= train.foreground_crops <= 1.0,
            f"train.foreground_crops must be a fraction in [0, 1], got {train.foreground_crops}",
        )
