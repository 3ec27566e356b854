"""Tests of dcn_ray.io.synth: synthetic EM-like stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from dcn_ray.core.dataset import load_dataset
from dcn_ray.io import tiff as stacks
from dcn_ray.io.synth import make_synthetic, write_synthetic


@pytest.fixture(scope="module")
def default_stack() -> tuple[np.ndarray, np.ndarray]:
    return make_synthetic()


def test_shapes_dtypes_and_values(default_stack) -> None:
    images, labels = default_stack
    assert images.shape == labels.shape == (24, 256, 256)
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 255}
    assert images.std() > 20  # real contrast, not a flat image
    small_images, small_labels = make_synthetic(slices=1, size=16, seed=3)
    assert small_images.shape == small_labels.shape == (1, 16, 16)


def test_deterministic_for_a_seed(default_stack) -> None:
    images, labels = make_synthetic(slices=3, size=64, seed=5)
    again_images, again_labels = make_synthetic(slices=3, size=64, seed=5)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    other_images, other_labels = make_synthetic(slices=3, size=64, seed=6)
    assert not np.array_equal(labels, other_labels)
    assert not np.array_equal(images, other_images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interior_fraction_like_isbi(seed: int) -> None:
    _, labels = make_synthetic(slices=4, size=256, seed=seed)
    assert 0.75 <= (labels == 255).mean() <= 0.85


def test_slices_change_slowly(default_stack) -> None:
    images, labels = default_stack

    def corr(stack: np.ndarray, a: int, b: int) -> float:
        return float(np.corrcoef(stack[a].ravel().astype(float), stack[b].ravel())[0, 1])

    for stack in (images, labels):
        near = np.mean([corr(stack, z, z + 1) for z in range(0, 20)])
        far = np.mean([corr(stack, z, z + 12) for z in range(0, 12)])
        assert near > 0.6
        assert near > far + 0.2
    assert not np.array_equal(labels[0], labels[1])  # but they do change


def test_membranes_are_darker_and_threshold_is_imperfect(default_stack) -> None:
    images, labels = default_stack
    interior = labels == 255
    assert images[~interior].mean() + 40 < images[interior].mean()
    best = max(((images > t) == interior).mean() for t in range(0, 256, 4))
    assert 0.85 < best < 0.99  # the dark blobs and the noise fool a plain threshold


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"slices": 0}, "slices must be >= 1"),
        ({"size": 15}, "size must be >= 16"),
    ],
)
def test_invalid_arguments(kwargs: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_synthetic(**kwargs)


def test_write_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder"
    image_path, label_path = write_synthetic(out, slices=3, size=48, seed=2)
    assert (image_path, label_path) == (out / "images.tif", out / "labels.tif")
    images, labels = make_synthetic(slices=3, size=48, seed=2)
    np.testing.assert_array_equal(tifffile.imread(image_path), images)
    np.testing.assert_array_equal(stacks.read_labels(label_path, 255), labels == 255)
    np.testing.assert_allclose(stacks.read_stack(image_path), images / 255.0, atol=1e-6)
    assert stacks.read_metadata(image_path) == {"synthetic": {"slices": 3, "size": 48, "seed": 2, "task": "cells"}}
    data = load_dataset(image_path, label_path, foreground=255, train="0:2", val="2:")
    assert data.train_masks.shape == (2, 48, 48)


def test_a_job_can_ask_for_the_organelle_task(tmp_path):
    """data.synthetic.task reaches the stack a sweep makes on first use."""
    import tifffile

    from dcn_ray.errors import InputError
    from dcn_ray.job.config import job_from_dict
    from dcn_ray.tune.checks import check_data

    raw = {
        "data": {"images": str(tmp_path / "images.tif"), "labels": str(tmp_path / "labels.tif"),
                 "split": {"train": "0:4", "val": "4:6"}, "synthetic": {"slices": 6, "size": 64, "task": "organelles"}},
        "train": {"crop": 32},
    }  # fmt: skip
    assert "data: 4 training and 2 validation slices" in check_data(job_from_dict(raw))[0]
    share = (tifffile.imread(tmp_path / "labels.tif") == 255).mean()
    assert 0.01 < share < 0.1  # sparse organelles, not the ~80 % cell interior
    raw["data"]["synthetic"]["task"] = "nuclei"
    with pytest.raises(InputError, match="data.synthetic.task"):
        job_from_dict(raw)
