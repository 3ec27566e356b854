"""Training one configuration: it learns, its checkpoints describe themselves, it resumes exactly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_job, train_job

from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.scores import segmentation_scores
from dcn_ray.core.train import build_model, evaluate
from dcn_ray.errors import InputError
from dcn_ray.job.config import job_from_dict

pytestmark = pytest.mark.usefixtures("two_threads")


def test_narrow_dcn_learns_the_synthetic_stack(synthetic_stack):
    """Validation IoU rises clearly above the untrained network's and the all-foreground prediction's.

    80 steps (was 150: 239 s alone at load 5-20): 0.963 at step 80 against a bar of 0.907 (all-foreground
    0.827 + 0.08), V_rand 0.896 against 0.418; about half the CPU time of 150 steps."""
    job = job_from_dict(
        small_job(
            *synthetic_stack,
            model={"width": 8},
            train={"steps": 80, "batch_size": 4, "crop": 64, "eval_every": 40, "threads": None},
        )
    )
    dataset = load_data(job.data)
    torch.manual_seed(job.train.seed)
    untrained = evaluate(
        build_model(job.model, (4, 8, 16), seed=job.train.seed), torch.from_numpy(dataset.val_images), dataset.val_masks
    )
    all_foreground = segmentation_scores(np.ones_like(dataset.val_masks), dataset.val_masks)

    result = train_job(job, (4, 8, 16), dataset)

    assert result.steps == 80 and len(result.history) == 2
    assert result.best_iou >= untrained["iou"] + 0.08
    assert result.best_iou >= all_foreground["iou"] + 0.08
    assert result.best_metrics["val_vrand"] >= all_foreground["vrand"] + 0.3
    assert result.best_iou == max(h["val_iou"] for h in result.history)


def test_checkpoints_are_self_describing_and_resume_exactly(synthetic_stack, tmp_path):
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 12, "eval_every": 4}))
    dataset = load_data(job.data)
    saved: list[tuple[dict, Path]] = []

    def keep(metrics, folder):
        copy = tmp_path / f"step{int(metrics['step'])}"
        copy.mkdir()
        for name in (checkpoint.MODEL_FILE, checkpoint.STATE_FILE):
            (copy / name).write_bytes((folder / name).read_bytes())
        saved.append((metrics, copy))

    full = train_job(job, (2, 8, 16), dataset, report=keep)
    assert [int(m["step"]) for m, _ in saved] == [4, 8, 12]

    # model.pt alone rebuilds the model: kwargs, config, weights, step
    model, payload = checkpoint.load_model(saved[-1][1])
    assert payload["model_kwargs"]["kernels"] == [2, 8, 16]
    assert payload["config"]["train"]["steps"] == 12
    assert payload["step"] == full.best_step
    raw = torch.load(saved[-1][1] / checkpoint.STATE_FILE, weights_only=True)
    assert raw["finished"] and raw["step"] == 12 and "optimizer" in raw

    # resuming from step 4 continues the same run: same steps, same final weights
    state = checkpoint.load(saved[0][1] / checkpoint.STATE_FILE)
    resumed_steps: list[int] = []
    resumed = train_job(job, (2, 8, 16), dataset, state=state, report=lambda m, f: resumed_steps.append(int(m["step"])))
    assert resumed_steps == [8, 12]
    assert [h["step"] for h in resumed.history] == [4, 8, 12]
    assert resumed.history[-1]["val_iou"] == pytest.approx(full.history[-1]["val_iou"], abs=1e-6)
    for name, tensor in full.model["weights"].items():
        torch.testing.assert_close(resumed.model["weights"][name], tensor)

    # a finished state returns at once, without training
    calls: list = []
    again = train_job(
        job,
        (2, 8, 16),
        dataset,
        state=checkpoint.load(saved[-1][1] / checkpoint.STATE_FILE),
        report=lambda m, f: calls.append(m),
    )
    assert calls == [] and again.steps == 12 and again.best_iou == full.best_iou


def test_same_seed_same_run(synthetic_stack):
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 6, "eval_every": 3}))
    dataset = load_data(job.data)
    first, second = train_job(job, (4, 8, 16), dataset), train_job(job, (4, 8, 16), dataset)
    assert [h["val_iou"] for h in first.history] == [h["val_iou"] for h in second.history]
    assert [h["train_loss"] for h in first.history] == pytest.approx([h["train_loss"] for h in second.history])


def test_train_threads_hold_for_its_training_only(synthetic_stack):
    """Tune reuses a trial's process for the next trial: one trial's train.threads must not become the next's."""
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 2, "eval_every": 2, "threads": 1}))
    assert torch.get_num_threads() == 2  # the two_threads fixture
    train_job(job, (4, 8, 16), load_data(job.data))
    assert torch.get_num_threads() == 2


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="not a readable dcn-ray checkpoint"):
        checkpoint.load(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(InputError, match="not a dcn-ray checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(InputError, match="model file not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_step_options_default_per_device_and_channels_last_trains_the_same():
    from dcn_ray.core.train import StepOptions, default_step_options, make_train_step
    from dcn_ray.models.dcn import DCN

    assert default_step_options(torch.device("cpu")) == StepOptions(channels_last=True)
    assert default_step_options(torch.device("cuda"), compile=True) == StepOptions(
        bf16=True, channels_last=True, compile=True
    )

    images = torch.rand(2, 1, 32, 32)
    targets = (images[:, 0] > 0.5).long()
    losses = {}
    for name, options in {"plain": StepOptions(), "channels_last": StepOptions(channels_last=True)}.items():
        torch.manual_seed(0)
        model = DCN(width=4)
        step = make_train_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), options)
        losses[name] = [float(step(images, targets, 0.5)) for _ in range(3)]
    assert losses["channels_last"] == pytest.approx(losses["plain"], rel=1e-4)
    assert losses["plain"][-1] < losses["plain"][0]
