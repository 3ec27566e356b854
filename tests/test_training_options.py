"""Training options for sparse foreground (issue 17): losses, schedules, foreground crops, weight decay,
the stride-aware deconvolution initialisation, the sparse synthetic task and their job keys."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_job, train_job

from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.loss import class_weights, dcn_loss, make_loss, soft_dice_loss
from dcn_ray.core.sampler import CropSampler
from dcn_ray.core.schedule import lr_factor
from dcn_ray.core.train import make_optimizer
from dcn_ray.errors import InputError
from dcn_ray.io.synth import make_synthetic
from dcn_ray.job.config import job_from_dict
from dcn_ray.models.dcn import DCN, DCNOutput

REPO = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)


def _output(fused: torch.Tensor, branch: torch.Tensor) -> DCNOutput:
    return DCNOutput(fused=fused, branches=(branch, branch, branch))


# ----------------------------------------------------------------------------- losses


def test_class_weights_balance_the_classes() -> None:
    assert class_weights(0.2) == pytest.approx((0.625, 2.5))
    assert class_weights(0.5) == pytest.approx((1.0, 1.0))
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            class_weights(bad)


def test_weighted_ce_against_hand_computed_values() -> None:
    # two pixels: logits (0, 0) with target 1 (CE ln 2); logits (ln 3, 0) with target 0 (CE -ln 0.75)
    fused = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (N=1, C=2, H=1, W=2)
    target = torch.tensor([[[1, 0]]])
    loss = make_loss("weighted_ce", foreground_fraction=0.2)
    total, parts = loss(_output(fused, torch.zeros_like(fused)), target, 0.5)
    fused_term = (2.5 * LN2 + 0.625 * -math.log(0.75)) / 2  # mean over pixels of weight x CE
    branch_term = (2.5 + 0.625) / 2 * LN2  # zero logits: CE ln 2 at each pixel
    assert parts.tolist() == pytest.approx([fused_term, branch_term, branch_term, branch_term], rel=1e-6)
    assert total.item() == pytest.approx(fused_term + 0.5 * 3 * branch_term, rel=1e-6)
    # a batch without foreground keeps its (background) weight: not PyTorch's weighted mean
    background = torch.zeros(1, 2, 2, 2)
    _, parts = loss(_output(background, background), torch.zeros(1, 2, 2, dtype=torch.long), 0.0)
    assert parts[0].item() == pytest.approx(0.625 * LN2, rel=1e-6)
    with pytest.raises(ValueError, match="foreground fraction"):
        make_loss("weighted_ce")


def test_soft_dice_against_hand_computed_values() -> None:
    even = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1, 0], [0, 0]]])
    # overlap 0.5, sum p 2, sum g 1: 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert soft_dice_loss(even, target).item() == pytest.approx(0.5)
    assert soft_dice_loss(even, target, smooth=0.0).item() == pytest.approx(1 - 1.0 / 3.0)
    sign = 2.0 * target - 1.0
    sure = torch.stack([-20 * sign, 20 * sign], dim=1)  # confident and right
    assert soft_dice_loss(sure, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = -sure  # confident and wrong: nothing overlaps
    assert soft_dice_loss(wrong, target, smooth=0.0).item() == pytest.approx(1.0, abs=1e-6)


def test_ce_dice_is_ce_plus_dice_of_the_fused_output() -> None:
    generator = torch.Generator().manual_seed(3)
    fused = torch.randn(2, 2, 8, 8, generator=generator, requires_grad=True)
    branch = torch.randn(2, 2, 8, 8, generator=generator)
    target = torch.randint(0, 2, (2, 8, 8), generator=generator)
    output = _output(fused, branch)
    total, parts = make_loss("ce_dice")(output, target, 0.3)
    ce_total, ce_parts = dcn_loss(output, target, 0.3)
    dice = soft_dice_loss(fused, target)
    torch.testing.assert_close(total, ce_total + dice)
    torch.testing.assert_close(parts, ce_parts + torch.tensor([dice.item(), 0.0, 0.0, 0.0]))
    assert parts[0].item() == pytest.approx(F.cross_entropy(fused, target).item() + dice.item(), rel=1e-6)
    total.backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0
    assert make_loss("ce") is dcn_loss
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("schedule", "middle", "last"),
    [
        ("constant", 1.0, 1.0),
        ("cosine", 0.5, 0.5 * (1 + math.cos(math.pi * 0.99))),
        ("poly", 0.5**0.9, 0.01**0.9),
    ],
)
def test_schedules_at_known_steps(schedule: str, middle: float, last: float) -> None:
    def factor(step: int) -> float:
        return lr_factor(step, 110, schedule=schedule, warmup=10)

    assert factor(0) == pytest.approx(0.1)  # warmup: (i + 1) / warmup
    assert factor(4) == pytest.approx(0.5)
    assert factor(9) == pytest.approx(1.0)  # warmup's last step reaches the peak
    assert factor(10) == pytest.approx(1.0)  # the schedule starts at the peak
    assert factor(60) == pytest.approx(middle)  # half of the 100 steps after warmup
    assert factor(109) == pytest.approx(last) and factor(109) > 0  # no step at rate 0
    assert lr_factor(0, 5, schedule=schedule) == pytest.approx(1.0)  # no warmup
    factors = [factor(step) for step in range(10, 110)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_schedule_arguments_are_checked() -> None:
    for bad in ({"schedule": "step"}, {"warmup": 5}, {"warmup": -1}):
        with pytest.raises(ValueError):
            lr_factor(0, 5, **bad)
    with pytest.raises(ValueError):
        lr_factor(-1, 5)


# ----------------------------------------------------------------------------- foreground crops


def _sparse_stack(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 64, 64) images and masks with ~1 % isolated foreground pixels, some at the border."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(4, 64, 64, generator=generator) < 0.01
    return torch.rand(4, 64, 64, generator=generator), masks


def _centre_is_foreground(sampler: CropSampler, masks: torch.Tensor, draws: int) -> torch.Tensor:
    half, hits = sampler.crop // 2, []
    for _ in range(draws):
        crops = sampler.draw()
        hits.append(masks[crops.z, crops.top + half, crops.left + half])
    return torch.cat(hits)


def test_all_foreground_crops_are_centred_on_foreground() -> None:
    images, masks = _sparse_stack()
    generator = torch.Generator().manual_seed(0)
    sampler = CropSampler(images, masks, crop=16, batch_size=8, generator=generator, foreground_crops=1.0)
    assert bool(_centre_is_foreground(sampler, masks, 100).all())
    crops = sampler.draw()
    x, y = sampler.cut(crops)
    assert bool((y.flatten(1).amax(1) == 1).all())  # every crop holds foreground, transformed or not
    for i in range(8):  # the images come from the same place as the labels
        window = (crops.z[i], slice(crops.top[i], crops.top[i] + 16), slice(crops.left[i], crops.left[i] + 16))
        assert float(x[i].sum()) == pytest.approx(float(images[window].sum()), rel=1e-5)


def test_half_foreground_crops_follow_the_binomial() -> None:
    images, masks = _sparse_stack(1)
    sampler = CropSampler(
        images, masks, crop=16, batch_size=16, generator=torch.Generator().manual_seed(1), foreground_crops=0.5
    )
    hits = _centre_is_foreground(sampler, masks, 250)
    uniform = float(masks[:, 8:57, 8:57].float().mean())  # a uniform crop's centre is foreground this often
    expected = 0.5 + 0.5 * uniform
    n = hits.numel()
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(float(hits.float().mean()) - expected) < 4 * sigma, (float(hits.float().mean()), expected)
    # uniform crops alone: centres are foreground only as often as the pixels are
    plain = CropSampler(images, masks, crop=16, batch_size=16, generator=torch.Generator().manual_seed(1))
    assert float(_centre_is_foreground(plain, masks, 250).float().mean()) < 0.05


def test_foreground_crops_are_repeatable_and_resume_from_the_generator() -> None:
    images, masks = _sparse_stack(2)

    def sampler(fraction: float, seed: int = 5) -> CropSampler:
        generator = torch.Generator().manual_seed(seed)
        return CropSampler(images, masks, crop=16, batch_size=4, generator=generator, foreground_crops=fraction)

    first, second = sampler(0.5), sampler(0.5)
    for _ in range(3):
        torch.testing.assert_close(first.sample(), second.sample())
    state = first.generator.get_state()
    expected = [first.sample() for _ in range(3)]
    resumed = sampler(0.5, seed=99)
    resumed.generator.set_state(state)
    for batch in expected:
        torch.testing.assert_close(resumed.sample(), batch)
    # f = 0 draws exactly what the sampler drew before the option existed
    plain = CropSampler(images, masks, crop=16, batch_size=4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampler(0.0).sample(), plain.sample())
    with pytest.raises(ValueError, match="foreground_crops"):
        sampler(1.5)


def test_foreground_near_the_border_only_still_gives_crops_that_hold_it() -> None:
    images, masks = torch.rand(1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 0, 31] = True  # no centred 16-px crop fits around it
    sampler = CropSampler(images, masks, crop=16, batch_size=8, foreground_crops=1.0)
    _, y = sampler.sample()
    assert int(y.sum()) == 8  # the one pixel, in every crop
    with pytest.raises(ValueError, match="foreground pixels"):
        CropSampler(images, torch.zeros_like(masks), crop=16, batch_size=2, foreground_crops=0.5)


# ----------------------------------------------------------------------------- initialisation


def test_stride_aware_deconvolution_init_keeps_the_activations_variance() -> None:
    ratios = []
    for seed in range(6):
        torch.manual_seed(seed)
        model = DCN(kernels=(6, 8, 12), width=16, batch_norm=False)
        for branch, stride in zip(model.branches, (2, 4, 8)):
            weight = branch.deconv.weight.detach()
            in_channels, _, k, _ = weight.shape
            expected = math.sqrt(2 * stride**2 / (in_channels * k * k))
            assert float(weight.std()) == pytest.approx(expected, rel=0.1)
        with torch.no_grad():
            half = model.block2(model.pool(model.block1(torch.rand(2, 1, 64, 64))))
            quarter = model.block3(model.pool(half))
            eighth = model.block4(model.pool(quarter))
            ratios.append(
                [
                    float(F.relu(branch.upsample(features)).pow(2).mean() / features.pow(2).mean())
                    for branch, features in zip(model.branches, (half, quarter, eighth))
                ]
            )
    # He: the ReLU output keeps the input's second moment (the stride-blind fan gave 1 / s^2: 1/4, 1/16, 1/64)
    for ratio in np.mean(ratios, axis=0):
        assert 0.6 < ratio < 1.6, np.mean(ratios, axis=0)


# ----------------------------------------------------------------------------- training


def test_weight_decay_reaches_the_optimizer_in_its_two_forms(synthetic_stack) -> None:
    model = DCN(width=4)
    weights = [p.detach().clone() for p in model.parameters()]
    shrunk = {}
    for name in ("adam", "adamw"):
        job = job_from_dict(small_job(*synthetic_stack, train={"optimizer": name, "weight_decay": 0.5, "lr": 0.1}))
        job = job.trained_on(load_data(job.data).train_foreground)
        candidate = DCN(width=4)
        candidate.load_state_dict(model.state_dict())
        optimizer = make_optimizer(job.train, candidate)
        assert optimizer.param_groups[0]["weight_decay"] == 0.5
        for p in candidate.parameters():
            p.grad = torch.zeros_like(p)  # only the decay moves the weights
        optimizer.step()
        shrunk[name] = [p.detach() for p in candidate.parameters()]
    for before, after in zip(weights, shrunk["adamw"]):  # decoupled: w (1 - lr wd)
        torch.testing.assert_close(after, before * 0.95)
    for before, after in zip(weights, shrunk["adam"]):  # L2 in Adam: a step of lr against the sign of w
        moved = before[before.abs() > 1e-3]
        torch.testing.assert_close(after[before.abs() > 1e-3], moved - 0.1 * moved.sign(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "ce_dice", "schedule": "cosine", "warmup": 3, "foreground_crops": 0.5, "optimizer": "adamw"},
        {"loss": "weighted_ce", "schedule": "poly", "foreground_crops": 1.0, "weight_decay": 0.01},
    ],
)
def test_resume_mid_schedule_gives_the_uninterrupted_run(synthetic_stack, tmp_path, options) -> None:
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 12, "eval_every": 4, **options}))
    dataset = load_data(job.data)
    states: dict[int, Path] = {}

    def keep(metrics, folder):
        states[int(metrics["step"])] = path = tmp_path / f"state{int(metrics['step'])}.pt"
        path.write_bytes((folder / checkpoint.STATE_FILE).read_bytes())

    full = train_job(job, (4, 8, 16), dataset, report=keep)
    lrs = {step: checkpoint.load(path)["optimizer"]["param_groups"][0]["lr"] for step, path in states.items()}
    settled = job.trained_on(dataset.train_foreground).train  # the keys the job leaves out come from its preset
    schedule = {"schedule": settled.schedule, "warmup": settled.warmup}
    for step, lr in lrs.items():  # the last step taken (step - 1) ran at the schedule's rate
        assert lr == pytest.approx(job.train.lr * lr_factor(step - 1, 12, **schedule))
    resumed = train_job(job, (4, 8, 16), dataset, state=checkpoint.load(states[4]))
    assert resumed.steps == 12
    for name, tensor in full.model["weights"].items():
        torch.testing.assert_close(resumed.model["weights"][name], tensor)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])


# ----------------------------------------------------------------------------- job keys and data


def test_training_keys_are_validated_and_logged(synthetic_stack) -> None:
    def job(**train):
        return job_from_dict(small_job(*synthetic_stack, train=train))

    flat = job(loss="ce_dice", schedule="cosine", warmup=2, foreground_crops=0.5).flat()
    assert {k: flat[f"train.{k}"] for k in ("loss", "schedule", "warmup", "foreground_crops")} == {
        "loss": "ce_dice",
        "schedule": "cosine",
        "warmup": 2,
        "foreground_crops": 0.5,
    }
    for bad, key in (
        ({"loss": "focal"}, "train.loss"),
        ({"schedule": "step"}, "train.schedule"),
        ({"warmup": 12}, "train.warmup"),
        ({"foreground_crops": 1.5}, "train.foreground_crops"),
        ({"foreground_crops": float("nan")}, "train.foreground_crops"),
        ({"optimizer": "lamb"}, "train.optimizer"),
        ({"preset": "nnunet"}, "train.preset"),
    ):
        with pytest.raises(InputError, match=key):
            job(**bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_organelle_task_is_a_sparse_dark_foreground(seed: int) -> None:
    images, labels = make_synthetic(slices=4, size=192, seed=seed, task="organelles")
    foreground = labels == 255
    assert set(np.unique(labels)) == {0, 255}
    assert 0.03 <= foreground.mean() <= 0.06
    assert images[foreground].mean() < images[~foreground].mean() - 25  # darker than the rest
    again = make_synthetic(slices=4, size=192, seed=seed, task="organelles")
    np.testing.assert_array_equal(again[1], labels)
    _, cells = make_synthetic(slices=4, size=192, seed=seed)
    assert (cells == 255).mean() > 0.7 and not np.array_equal(cells, labels)
    with pytest.raises(ValueError, match="task"):
        make_synthetic(slices=1, size=32, task="synapses")


def test_synth_command_writes_the_organelle_task(tmp_path) -> None:
    from dcn_ray.cli import main
    from dcn_ray.io.tiff import read_labels, read_metadata

    try:
        main(["synth", str(tmp_path / "org"), "--task", "organelles", "--slices", "2", "--size", "96", "--seed", "4"])
    except SystemExit as done:
        assert done.code in (0, None)
    mask = read_labels(tmp_path / "org" / "labels.tif", 255)
    np.testing.assert_array_equal(mask, make_synthetic(slices=2, size=96, seed=4, task="organelles")[1] == 255)
    assert read_metadata(tmp_path / "org" / "images.tif")["synthetic"]["task"] == "organelles"
