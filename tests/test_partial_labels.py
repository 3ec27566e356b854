"""Partly labelled data: unlabelled pixels change neither the loss nor the scores, and training runs on them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import torch
from conftest import small_job, train_job

from dcn_ray.core.dataset import load_data, load_dataset
from dcn_ray.core.loss import make_loss
from dcn_ray.core.partial import IGNORE, label_masks
from dcn_ray.core.sampler import CropSampler
from dcn_ray.core.scores import baseline_scores, segmentation_scores
from dcn_ray.core.scribbles import BACKGROUND, FOREGROUND, UNPAINTED, painted_slices, scribbles
from dcn_ray.errors import InputError
from dcn_ray.io.tiff import read_labels
from dcn_ray.io.volumes import label_value_slices, read_label_values
from dcn_ray.job.config import job_from_dict
from dcn_ray.models.dcn import DCNOutput

LABELLED = (1, 5, 10)  # 3 of 12 slices painted (0:10 trains, 10:12 validates)


@pytest.fixture(scope="module")
def partial_stack(synthetic_stack, tmp_path_factory):
    """The synthetic stack's images with napari-style labels: 3 slices painted whole, and scribbles."""
    folder = tmp_path_factory.mktemp("partial")
    mask = read_labels(synthetic_stack[1], 255)
    slices, strokes = folder / "slices.tif", folder / "scribbles.tif"
    tifffile.imwrite(slices, painted_slices(mask, LABELLED))
    tifffile.imwrite(strokes, scribbles(mask, 0.05, seed=3))
    return synthetic_stack[0], slices, strokes, mask


def test_label_rules(partial_stack):
    raw = np.array([[[0, 1, 2, 7]]])
    mask, labelled = label_masks(raw, foreground=1, background=2)
    assert mask.tolist() == [[[False, True, False, False]]] and labelled.tolist() == [[[False, True, True, False]]]
    mask, labelled = label_masks(raw, foreground=1, unlabelled=7)
    assert labelled.tolist() == [[[True, True, True, False]]] and mask.sum() == 1
    assert label_masks(np.array([[[1, 2]]]), foreground=1, background=2)[1] is None  # all labelled: the fast path
    with pytest.raises(InputError, match="no pixel has the foreground value 3"):
        label_masks(raw, foreground=3, background=2)
    # the job checks the keys before any data is read
    images, slices, _, _ = partial_stack
    for data, message in (
        ({"background": 1, "foreground": 1}, "data.background 1 needs an integer data.foreground other than it"),
        ({"background": 2, "unlabelled": 0, "foreground": 1}, "give one"),
        ({"unlabelled": 0, "foreground": "color"}, "needs an integer data.foreground"),
    ):
        with pytest.raises(InputError, match=message):
            job_from_dict(small_job(images, slices, data=data))


def test_an_unlabelled_value_in_a_zarr_array(partial_stack, tmp_path):
    import zarr

    images, slices, _, mask = partial_stack
    layer = tifffile.imread(slices)
    raw = np.where(layer == UNPAINTED, 127, np.where(layer == FOREGROUND, 255, 0)).astype(np.uint8)
    zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=raw.shape, dtype=raw.dtype)[:] = raw
    data = load_dataset(images, tmp_path / "labels.zarr", foreground=255, unlabelled=127, train="0:10", val="10")
    assert [z for z in range(10) if data.train_labelled[z].any()] == [1, 5] and data.val_labelled is None
    assert np.array_equal(data.train_masks, mask[:10] & (layer[:10] != UNPAINTED))


def test_label_values_one_slice_at_a_time_are_the_whole_volume_s(partial_stack, tmp_path):
    """suggest reads a labels layer slice by slice (stacks larger than memory): the same values, TIFF or zarr."""
    import zarr

    layer = tifffile.imread(partial_stack[1])
    zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=layer.shape, dtype=layer.dtype)[:] = layer
    for source in (partial_stack[1], tmp_path / "labels.zarr"):
        pages = list(label_value_slices(source))
        assert len(pages) == layer.shape[0] and np.array_equal(np.stack(pages), read_label_values(source))
        assert np.array_equal(np.stack(pages), layer)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="labels are RGB"):
        next(label_value_slices(tmp_path / "rgb.tif"))
    zarr.open_array(str(tmp_path / "float.zarr"), mode="w", shape=(2, 8, 8), dtype="float32")[:] = 0.5
    with pytest.raises(InputError, match="needs integer label values"):
        next(label_value_slices(tmp_path / "float.zarr"))


def test_scribbles_are_strokes_inside_one_class(partial_stack):
    *_, strokes_path, mask = partial_stack
    layer = tifffile.imread(strokes_path)
    painted = layer != UNPAINTED
    assert 0.05 <= painted.mean() < 0.07
    assert np.all(mask[layer == FOREGROUND]) and not np.any(mask[layer == BACKGROUND])
    assert (layer == FOREGROUND).any() and (layer == BACKGROUND).any()
    # strokes, not scattered pixels: most painted pixels have a painted 4-neighbour on each axis
    inner = painted[:, 1:-1, 1:-1] & painted[:, :-2, 1:-1] & painted[:, 2:, 1:-1]
    assert inner.sum() > 0.5 * painted.sum()
    assert np.array_equal(scribbles(mask, 0.05, seed=3), layer)  # deterministic


def test_dataset_of_partly_labelled_slices(partial_stack, caplog):
    images, slices, _, mask = partial_stack
    with caplog.at_level(logging.WARNING):
        data = load_dataset(images, slices, foreground=1, background=2, train="0:10", val="10:12")
    assert "data.split.val: slice(s) [11] hold no labelled pixel and are not scored" in caplog.text
    assert data.train_labelled.shape == (10, 128, 128)
    assert [z for z in range(10) if data.train_labelled[z].any()] == [1, 5]
    assert data.train_labelled[[1, 5]].all()
    assert data.train_foreground == pytest.approx(mask[[1, 5]].mean())  # of the labelled pixels only
    # what the labels hold at unlabelled pixels changes nothing
    other = slices.with_name("other.tif")
    rewritten = tifffile.imread(slices)
    rewritten[rewritten == UNPAINTED] = 9
    tifffile.imwrite(other, rewritten)
    again = load_dataset(images, other, foreground=1, background=2, train="0:10", val="10:12")
    for key in ("train_masks", "train_labelled", "val_masks", "val_labelled"):
        assert np.array_equal(getattr(data, key), getattr(again, key))
    # a scored split without any label: one line
    with pytest.raises(InputError, match=r"data.split.val: no labelled pixel .*label some of them"):
        load_dataset(images, slices, foreground=1, background=2, train="0:10", val="11")
    # the default reads every pixel as labelled, as before
    full = load_data(job_from_dict(small_job(images, slices, data={"foreground": 1})).data)
    assert full.train_labelled is None and full.val_labelled is None


def _output(generator: torch.Generator, branches: int = 3) -> DCNOutput:
    logits = [torch.randn(2, 2, 16, 16, generator=generator) for _ in range(branches + 1)]
    return DCNOutput(fused=logits[0], branches=tuple(logits[1:]))


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "ce_dice"])
def test_unlabelled_pixels_add_nothing_to_any_loss(name):
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (2, 16, 16), generator=generator)
    unlabelled = torch.rand(2, 16, 16, generator=generator) < 0.6
    partial = torch.where(unlabelled, torch.tensor(IGNORE), target)
    loss = make_loss(name, foreground_fraction=0.4)
    output = _output(generator)
    total, parts = loss(output, partial, 0.5)
    # what the network predicts at unlabelled pixels: no change, in the fused and every branch term
    noise = _output(generator)
    moved = DCNOutput(
        fused=torch.where(unlabelled[:, None], noise.fused, output.fused),
        branches=tuple(torch.where(unlabelled[:, None], n, b) for n, b in zip(noise.branches, output.branches)),
    )
    moved_total, moved_parts = loss(moved, partial, 0.5)
    assert torch.allclose(total, moved_total, atol=1e-6) and torch.allclose(parts, moved_parts, atol=1e-6)
    assert torch.isfinite(total)
    # the labelled pixels do count
    assert not torch.allclose(loss(noise, partial, 0.5)[0], total)
    # all labelled: the loss of before, to the bit (the formulas as they were before partial labels)
    assert torch.equal(loss(output, target, 0.5)[0], _loss_before(name, output, target, 0.5))


def _loss_before(name: str, output: DCNOutput, target: torch.Tensor, aux: float) -> torch.Tensor:
    import torch.nn.functional as F

    weights = torch.tensor((0.5 / 0.6, 0.5 / 0.4))
    if name == "weighted_ce":
        term = lambda z: F.cross_entropy(z.float(), target, weight=weights, reduction="none").mean()  # noqa: E731
    else:
        term = lambda z: F.cross_entropy(z, target)  # noqa: E731
    total = term(output.fused) + aux * torch.stack([term(b) for b in output.branches]).sum()
    if name == "ce_dice":
        probability = torch.softmax(output.fused.float(), dim=1)[:, 1]
        truth = target.to(probability.dtype)
        total = total + 1.0 - (2.0 * (probability * truth).sum() + 1.0) / (probability.sum() + truth.sum() + 1.0)
    return total


def test_unlabelled_pixels_count_in_no_score(partial_stack):
    rng = np.random.default_rng(0)
    *_, strokes_path, mask = partial_stack
    labelled = tifffile.imread(strokes_path)[:4] != UNPAINTED
    truth = mask[:4] & labelled
    pred = np.where(rng.random(truth.shape) < 0.1, ~mask[:4], mask[:4])  # truth with 10 % flipped
    scores = segmentation_scores(pred, truth, labelled=labelled)
    assert 0.5 < scores["iou"] < 1.0
    other_pred = np.where(labelled, pred, rng.random(truth.shape) < 0.5)
    other_truth = np.where(labelled, truth, rng.random(truth.shape) < 0.5)
    assert segmentation_scores(other_pred, other_truth, labelled=labelled) == scores
    assert baseline_scores(other_truth, labelled) == baseline_scores(truth, labelled)
    # the labelled pixels do count; every pixel labelled is the score of before
    assert segmentation_scores(~pred, truth, labelled=labelled)["iou"] < scores["iou"]
    everything = np.ones_like(labelled)
    assert segmentation_scores(pred, mask[:4], labelled=everything) == pytest.approx(
        segmentation_scores(pred, mask[:4])
    )
    # a slice without a label is left out
    empty = labelled.copy()
    empty[0] = False
    assert segmentation_scores(pred, truth, labelled=empty) == segmentation_scores(
        pred[1:], truth[1:], labelled=labelled[1:]
    )


def test_sampler_never_draws_a_crop_without_a_label():
    masks = torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(1)) < 0.3
    labelled = torch.zeros(4, 64, 64, dtype=torch.bool)
    labelled[2, 40:44, 5:60] = True  # one stroke on one slice
    sampler = CropSampler(
        torch.rand(4, 64, 64),
        masks,
        crop=16,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
        foreground_crops=0.3,
        labelled=labelled,
    )
    for _ in range(20):
        _, y = sampler.sample()
        assert ((y != IGNORE).flatten(1).any(1)).all()
        assert set(y.unique().tolist()) <= {IGNORE, 0, 1}
    crops = sampler.draw()
    assert (crops.z == 2).all()
    # without labelled the draws are those of before
    plain = CropSampler(torch.rand(4, 64, 64), masks, crop=16, batch_size=4, generator=torch.Generator().manual_seed(5))
    same = CropSampler(
        plain.images, masks, crop=16, batch_size=4, generator=torch.Generator().manual_seed(5), labelled=None
    )
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(plain.draw(), same.draw()))


@pytest.mark.parametrize("labels", ["slices", "scribbles"])
def test_training_on_partial_labels(partial_stack, labels, two_threads):
    images, slices, strokes, mask = partial_stack
    path = slices if labels == "slices" else strokes
    raw = small_job(images, path, data={"foreground": 1, "background": 2})
    raw["train"] |= {"steps": 30, "eval_every": 15, "crop": 48, "batch_size": 4}
    job = job_from_dict(raw)
    dataset = load_data(job.data)
    result = train_job(job, (4, 8, 16), dataset)
    assert len(result.history) == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
    assert 0.0 < result.best_iou <= 1.0
    # the validation score is the score of the labelled pixels of slice 10 only
    assert result.history[-1]["val_iou"] != pytest.approx(float(mask[10:12].mean()))


def test_branch_scores_read_labelled_pixels_only(partial_stack, tmp_path):
    from dcn_ray.core.analysis import analyse
    from dcn_ray.core.train import build_model
    from dcn_ray.job.model_config import ModelConfig

    images, _, strokes, mask = partial_stack
    stack = tifffile.imread(images)[:2].astype(np.float32) / 255.0
    labelled = tifffile.imread(strokes)[:2] != UNPAINTED
    model = build_model(ModelConfig(width=4), (4, 8, 16), seed=0)
    first = analyse(model, stack, mask[:2], tmp_path / "a", labelled=labelled).metrics()
    flipped = np.where(labelled, mask[:2], ~mask[:2])  # the truth rewritten where unlabelled
    assert analyse(model, stack, flipped, tmp_path / "b", labelled=labelled).metrics() == first
    assert analyse(model, stack, mask[:2], tmp_path / "c").metrics() != first


def test_predict_scores_a_partial_labels_layer_on_its_labelled_pixels(partial_stack, tmp_path, capsys):
    from conftest import run_cli

    from dcn_ray.core import checkpoint

    images, slices, _, mask = partial_stack
    job = job_from_dict(small_job(images, slices, data={"foreground": 1, "background": 2}, train={"steps": 2}))
    model = tmp_path / "model.pt"
    checkpoint.save(train_job(job, (4, 8, 16), load_data(job.data)).model, model)
    out = tmp_path / "out.tif"
    args = ["predict", model, images, out, "--no-tta", "--target", "objects", "--labels"]
    code, predicted, err = run_cli(capsys, [*args, slices])  # read as the model's data section says
    assert code == 0, err
    assert "labelled: " in predicted and "unlabelled pixels count in no score" in predicted
    partial = ["--foreground", str(FOREGROUND), "--background", str(BACKGROUND), "--target", "objects"]
    code, scored, err = run_cli(capsys, ["score", out, slices, *partial])
    assert code == 0 and scored == predicted, err
    full = tmp_path / "full.tif"  # every pixel painted: every pixel scored
    tifffile.imwrite(full, np.where(mask, FOREGROUND, BACKGROUND).astype(np.uint8))
    code, out_text, err = run_cli(capsys, [*args, full])
    assert code == 0 and "IoU" in out_text, err
    assert "pixels (100.0 %)" in out_text
