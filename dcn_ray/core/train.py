"""Train one configuration of any model family: the loop every sweep trial runs, free of Ray.

Ray enters only through the ``report`` hook, which receives the metrics of each
evaluation and a folder holding the checkpoint written for it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcn_ray import models
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import Dataset
from dcn_ray.core.device import select_device
from dcn_ray.core.loss import Loss, aux_weight, dcn_loss, make_loss
from dcn_ray.core.partial import labelled_slices
from dcn_ray.core.sampler import CropSampler
from dcn_ray.core.schedule import lr_factor, set_lr
from dcn_ray.core.scores import BEST_VAL_HEADLINE, HEADLINE_SCORE, VAL_HEADLINE, segmentation_scores
from dcn_ray.job.model_config import ModelConfig
from dcn_ray.job.train_config import TrainConfig, resolve_training
from dcn_ray.kernels import Kernels
from dcn_ray.models.outputs import pad_forward

log = logging.getLogger(__name__)

#: Called after every evaluation with the metrics and a folder holding model.pt and state.pt.
#: The folder exists only during the call: copy what you keep.
Reporter = Callable[[dict[str, float], Path], None]


@dataclass(frozen=True)
class TrainResult:
    """What one trained configuration achieved."""

    best_iou: float
    best_step: int
    steps: int
    best_metrics: dict[str, float]
    #: The best model's checkpoint payload (see dcn_ray.core.checkpoint).
    model: dict[str, Any]
    history: tuple[dict[str, float], ...]


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs on its device (bench/gpu_train.py compares the variants)."""

    bf16: bool = False  # bf16 autocast
    channels_last: bool = False  # NHWC memory format for model and batch
    compile: bool = False  # torch.compile the model


def default_step_options(device: torch.device, *, compile: bool = False) -> StepOptions:
    """channels_last everywhere, bf16 autocast on CUDA only (CPU bf16 is slower on most hosts).

    On CPU, channels_last runs oneDNN's NHWC convolutions, pooling and batch norm: about 1.1-1.2x the
    images/s of NCHW at the CPU study's settings (bench/train_cpu.py), same losses to ~1e-6, not bit for bit.
    """
    return StepOptions(bf16=device.type == "cuda", channels_last=True, compile=compile)


def make_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, options: StepOptions, *, loss: Loss = dcn_loss
) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """``step(images, targets, aux) -> loss``: one optimizer step of ``loss``; the loss stays on the device.

    With ``options.channels_last`` the model is converted in place here.
    """
    device = next(model.parameters()).device
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if options.compile else model

    def step(images: torch.Tensor, targets: torch.Tensor, aux: float) -> torch.Tensor:
        if options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, options.bf16):
            total, _ = loss(forward(images), targets, aux)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total.detach()

    return step


def build_model(config: ModelConfig, kernels: Kernels | None = None, *, seed: int) -> nn.Module:
    """The network of ``config.family`` (a DCN with its ``model.kernels``, or ``kernels`` given here in
    their place), each layer initialised from ``seed`` and its name (:func:`dcn_ray.models.init.init_weights`)."""
    family = models.get(config.family)
    kwargs = family.job_kwargs(config.to_dict())
    if kernels is not None:
        if not family.uses_kernels:
            raise ValueError(f"a {family.title} has no kernels, got {tuple(kernels)}")
        kwargs["kernels"] = tuple(kernels)
    return models.build(family.name, **kwargs, seed=seed)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    masks: np.ndarray,
    labelled: np.ndarray | None = None,
    target: str = "cells",
) -> dict[str, float]:
    """Whole-slice inference over (Z, Y, X) images (or the (Z, 2N + 1, Y, X) inputs of a model of
    context N, :meth:`Dataset.inputs <dcn_ray.core.dataset.Dataset.inputs>`) on the model's device;
    the scores of ``target`` (of the ``labelled`` pixels alone for partly labelled truth: slices
    without one are not predicted)."""
    if labelled is not None:
        keep = labelled_slices(labelled, len(masks))
        images, masks, labelled = images[torch.from_numpy(keep).to(images.device)], masks[keep], labelled[keep]
    predictions = np.empty(masks.shape, dtype=bool)
    multiple = models.size_multiple(model)
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(images.device, images.device.type == "cuda"):
        for index in range(images.shape[0]):
            image = images[index][None, None] if images.ndim == 3 else images[index][None]
            output = pad_forward(model, image, multiple)
            predictions[index] = (output.fused[0].argmax(0) == 1).cpu().numpy()
    model.train(was_training)
    return segmentation_scores(predictions, masks, labelled=labelled, target=target)


def score_test_split(model: nn.Module, dataset: Dataset, device: torch.device) -> dict[str, float]:
    """The test split scored once with ``model`` (the chosen checkpoint): ``test_iou``, ``test_dice``...

    Keys are ``test_`` + :data:`~dcn_ray.core.scores.SCORE_KEYS`; {} when the dataset has no test split.
    The prediction is the argmax, as for validation: no threshold is chosen on the test slices.
    """
    inputs = dataset.inputs("test")
    if inputs is None or dataset.test_masks is None:
        return {}
    images = torch.from_numpy(inputs).to(device)
    scores = evaluate(model.to(device), images, dataset.test_masks, dataset.test_labelled, dataset.target)
    return {f"test_{name}": value for name, value in scores.items()}


def train(
    model_config: ModelConfig,
    settings: TrainConfig,
    dataset: Dataset,
    *,
    provenance: Mapping[str, Any] | None = None,
    report: Reporter | None = None,
    state: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train the network of ``model_config`` (a DCN with its ``model.kernels``) for ``settings.steps`` steps,
    evaluating every ``settings.eval_every`` steps.

    ``settings`` as decided for this data (a sweep's trial decides its job once:
    :meth:`~dcn_ray.job.config.JobConfig.trained_on`); settings not yet decided (``train.preset: auto``,
    a direct call) are decided here from the dataset's training foreground. Checkpoints
    record ``provenance`` (the trial's job: data, split...) with the model and training as trained.
    ``state`` is a ``state.pt`` payload to resume from; a finished state returns at once.
    The best model by validation IoU is kept. Seeds make a run repeatable.
    """
    if not settings.resolved:  # a direct call: a trial's settings come decided
        settings = resolve_training(settings, dataset.train_foreground)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train(model_config, settings, dataset, provenance, report, state, device or select_device())
    finally:  # a process that trains again (Tune reuses trial processes) starts with the threads it had
        torch.set_num_threads(threads)


def _train(
    model_config: ModelConfig,
    settings: TrainConfig,
    dataset: Dataset,
    provenance: Mapping[str, Any] | None,
    report: Reporter | None,
    state: dict[str, Any] | None,
    device: torch.device,
) -> TrainResult:
    config = {**(provenance or {}), "model": model_config.to_dict(), "train": settings.to_dict()}
    torch.manual_seed(settings.seed)
    model = build_model(model_config, seed=settings.seed).to(device)
    label = models.describe(model)  # in log lines
    optimizer = make_optimizer(settings, model)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    _check_context(model, dataset)
    train_images = torch.from_numpy(dataset.inputs("train")).to(device)
    sampler = CropSampler(
        train_images,
        torch.from_numpy(dataset.train_masks).to(device),
        crop=settings.crop,
        batch_size=settings.batch_size,
        transforms=settings.transforms,
        generator=generator,
        foreground_crops=settings.foreground_crops,
        labelled=None if dataset.train_labelled is None else torch.from_numpy(dataset.train_labelled).to(device),
    )
    val_images = torch.from_numpy(dataset.inputs("val")).to(device)

    step, history, best = 0, [], None
    if state is not None:
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
        step, history, best = state["step"], list(state["history"]), state["best"]
        log.info("resuming %s at step %d", label, step)
        if state.get("finished"):
            return _result(best, step, history)

    model.train()
    loss = make_loss(settings.loss, foreground_fraction=dataset.train_foreground, device=device)
    options = default_step_options(device, compile=settings.compile)
    train_step = make_train_step(model, optimizer, options, loss=loss)
    loss_sum = torch.zeros((), device=device)
    losses_since_eval = 0
    elapsed = history[-1].get("elapsed_s", 0.0) if history else 0.0
    started = loop_started = time.perf_counter()
    while step < settings.steps:
        images, targets = sampler.sample()
        factor = lr_factor(step, settings.steps, schedule=settings.schedule, warmup=settings.warmup)
        set_lr(optimizer, settings.lr * factor)
        loss_sum += train_step(
            images, targets, aux_weight(step, settings.steps, start=settings.aux_start, end=settings.aux_end)
        )
        losses_since_eval += 1
        step += 1
        if step % settings.eval_every and step < settings.steps:
            continue
        _check_finite(model, float(loss_sum) / losses_since_eval, step, settings.lr)
        metrics = {
            f"val_{name}": value
            for name, value in evaluate(
                model, val_images, dataset.val_masks, dataset.val_labelled, dataset.target
            ).items()
        }
        metrics["train_loss"] = float(loss_sum) / losses_since_eval
        metrics["step"] = step
        metrics["images_per_s"] = losses_since_eval * settings.batch_size / max(time.perf_counter() - started, 1e-9)
        metrics["elapsed_s"] = elapsed + time.perf_counter() - loop_started  # training wall time, reports included
        loss_sum.zero_()
        losses_since_eval = 0
        if best is None or HEADLINE_SCORE.better(metrics[VAL_HEADLINE], best["metrics"][VAL_HEADLINE]):
            best = checkpoint.model_payload(model, config=config, step=step, metrics=metrics)
        metrics[BEST_VAL_HEADLINE] = best["metrics"][VAL_HEADLINE]
        history.append(metrics)
        log.info(
            "%s step %d: %s %.4f (best %.4f)",
            label,
            step,
            VAL_HEADLINE,
            metrics[VAL_HEADLINE],
            metrics[BEST_VAL_HEADLINE],
        )
        if report is not None:
            finished = step >= settings.steps
            _report(
                report,
                metrics,
                best,
                checkpoint.state_payload(
                    model, optimizer, generator, step=step, history=history, best=best, finished=finished
                ),
            )
        started = time.perf_counter()
    return _result(best, step, history)


def _check_finite(model: nn.Module, loss: float, step: int, lr: float) -> None:
    """checkpoint.Diverged if the mean loss since the last evaluation or a weight is NaN or infinite."""
    broken = "the loss" if not np.isfinite(loss) else checkpoint.first_non_finite(model.state_dict())
    if broken is not None:
        raise checkpoint.Diverged(
            f"training diverged by step {step}: {broken} is NaN or infinite (train.lr {lr:g} may be too high)"
        )


def _check_context(model: nn.Module, dataset: Dataset) -> None:
    """ValueError unless the dataset's inputs are what the model reads (its context)."""
    if models.context_of(model) != dataset.context:
        raise ValueError(
            f"the model reads context {models.context_of(model)} but the dataset was loaded with context "
            f"{dataset.context}: load it with load_data(job.data, context=job.model.context)"
        )


def _report(report: Reporter, metrics: dict[str, float], best: dict, state: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="dcn-ckpt-") as folder:
        checkpoint.save(best, Path(folder) / checkpoint.MODEL_FILE)
        checkpoint.save(state, Path(folder) / checkpoint.STATE_FILE)
        report(dict(metrics), Path(folder))


def _result(best: dict, step: int, history: list[dict[str, float]]) -> TrainResult:
    return TrainResult(
        best_iou=best["metrics"][VAL_HEADLINE],
        best_step=best["step"],
        steps=step,
        best_metrics=dict(best["metrics"]),
        model=best,
        history=tuple(history),
    )


def make_optimizer(settings: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``settings.optimizer`` over every parameter, with ``settings.weight_decay``
    (of decided settings: :func:`dcn_ray.job.train_config.resolve_training`)."""
    if not settings.resolved:
        raise ValueError("the training preset is not decided yet: pass the settings through resolve_training first")
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    if settings.optimizer == "adamw":  # decoupled: each step multiplies every weight by 1 - lr * weight_decay
        return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # Adam's weight_decay adds weight_decay * weight to the gradient: L2 regularisation, as the DCN paper had it
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
