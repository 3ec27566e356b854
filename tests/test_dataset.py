"""Tests of dcn_ray.core.dataset: splits, ROI and load_dataset on real TIFF files in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from tiffs import ISBI, membrane_labels, random_stack, write_tif

from dcn_ray.core import dataset
from dcn_ray.errors import InputError


def _raises(match: str):
    """pytest.raises(InputError) whose message matches ``match``."""
    return pytest.raises(InputError, match=match)


# ---------------------------------------------------------------- splits and ROI


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0:27", list(range(27))),
        (":3", [0, 1, 2]),
        ("27:", [27, 28, 29]),
        ("-3:", [27, 28, 29]),
        ("0:30:10", [0, 10, 20]),
        (" 2:5 ", [2, 3, 4]),
        ("5", [5]),
        ("1, 4,-1", [1, 4, 29]),
        ([0, 5, -1], [0, 5, 29]),
        ((3,), [3]),
        (7, [7]),  # one index, as YAML reads `val: 7`
        ("0:30", list(range(30))),
    ],
)
def test_parse_split(spec, expected) -> None:
    assert dataset.parse_split(spec, 30, name="data.split.train") == expected


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("0:40", "reaches past"),
        ("-31:", "reaches past"),
        ([30], "out of range"),
        ([-31], "out of range"),
        ("5:5", "selects no slice"),
        ([], "selects no slice"),
        ("a:b", "not a slice"),
        ("1:2:3:4", "not a slice"),
        ("0:10:0", "step of 0"),
        ("abc", "neither a slice"),
        ([1, 1], "twice"),
        ([1.5], "not an integer"),
        (None, "must be a slice"),
        (7.0, "must be a slice"),
        (True, "must be a slice"),
    ],
)
def test_parse_split_errors(spec, problem: str) -> None:
    with _raises(f"data.split.val.*{problem}"):
        dataset.parse_split(spec, 30, name="data.split.val")


def test_apply_roi() -> None:
    stack = np.arange(2 * 10 * 12).reshape(2, 10, 12)
    np.testing.assert_array_equal(dataset.apply_roi(stack, (2, 3, 4, 5)), stack[:, 2:6, 3:8])
    assert dataset.apply_roi(stack, None) is stack
    assert dataset.apply_roi(stack, [0, 0, 10, 12]).shape == (2, 10, 12)
    for roi in [(8, 0, 4, 4), (0, 10, 4, 4), (-1, 0, 4, 4), (0, 0, 0, 4)]:
        with _raises(rf"ROI .*{roi[0]}, {roi[1]}, {roi[2]}, {roi[3]}.*10 x 12"):
            dataset.apply_roi(stack, roi)
    with _raises("four integers"):
        dataset.apply_roi(stack, (1, 2, 3))


# ---------------------------------------------------------------- load_dataset


def _pair(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    return write_tif(tmp_path, "images.tif", images), write_tif(tmp_path, "labels.tif", labels)


def test_load_dataset_splits_and_roi(tmp_path: Path, caplog) -> None:
    images, labels = random_stack(6), membrane_labels(6)
    image_path, label_path = _pair(tmp_path, images, labels)
    with caplog.at_level(logging.WARNING, logger="dcn_ray.core.dataset"):
        data = dataset.load_dataset(image_path, label_path, foreground=255, train="0:4", val=[4, 5], roi=(1, 2, 12, 20))
    assert not caplog.records
    assert data.train_slices == [0, 1, 2, 3] and data.val_slices == [4, 5]
    assert data.test_images is None and data.test_masks is None and data.test_slices == []
    assert data.train_images.shape == (4, 12, 20) and data.val_masks.shape == (2, 12, 20)
    np.testing.assert_allclose(data.val_images, images[4:, 1:13, 2:22] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(data.train_masks, labels[:4, 1:13, 2:22] == 255)
    assert data.train_images.dtype == np.float32 and data.train_masks.dtype == bool


def test_load_dataset_warns_on_overlap(tmp_path: Path, caplog) -> None:
    image_path, label_path = _pair(tmp_path, random_stack(6), membrane_labels(6))
    with caplog.at_level(logging.WARNING, logger="dcn_ray.core.dataset"):
        data = dataset.load_dataset(image_path, label_path, foreground=255, train=":5", val="4:", test="-1:")
    assert data.test_slices == [5] and data.test_images.shape == (1, 24, 32)
    text = caplog.text
    assert "train and data.split.val share 1 slice(s): [4]" in text
    assert "val and data.split.test share 1 slice(s): [5]" in text


def test_load_dataset_warns_when_the_test_block_has_no_gap(tmp_path: Path, caplog) -> None:
    image_path, label_path = _pair(tmp_path, random_stack(8), membrane_labels(8))
    with caplog.at_level(logging.WARNING, logger="dcn_ray.core.dataset"):
        dataset.load_dataset(image_path, label_path, foreground=255, train="0:3", val="4:6", test="6:8")
    assert "data.split.test has no gap to data.split.val: its slice(s) [5]" in caplog.text
    assert "data.split.train" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dcn_ray.core.dataset"):
        dataset.load_dataset(image_path, label_path, foreground=255, train="0:3", val="4:5", test="6:8")
    assert not caplog.records  # one-slice gaps (3 and 5): z-blocked as jobs/table1.yaml


def test_load_dataset_shape_mismatch(tmp_path: Path) -> None:
    image_path, label_path = _pair(tmp_path, random_stack(6), membrane_labels(5))
    with _raises(r"\(6, 24, 32\).*labels.*\(5, 24, 32\)"):
        dataset.load_dataset(image_path, label_path, foreground=255, train="0:4", val="4:")


def test_load_dataset_refuses_train_split_without_foreground(tmp_path: Path) -> None:
    labels = membrane_labels(6)
    labels[:4] = 0
    image_path, label_path = _pair(tmp_path, random_stack(6), labels)
    with _raises("data.split.train: no foreground pixel.*labels.tif"):
        dataset.load_dataset(image_path, label_path, foreground=255, train="0:4", val="4:")
    with _raises(r"labels.tif: no pixel has the foreground value 7 \(values present: 0, 255\)"):
        dataset.load_dataset(image_path, label_path, foreground=7, train="4:", val="4:")


def test_load_dataset_refuses_all_foreground_train_split(tmp_path: Path) -> None:
    image_path, label_path = _pair(tmp_path, random_stack(6), membrane_labels(6))
    with _raises("data.split.train: every pixel .* foreground.*ROI"):
        dataset.load_dataset(
            image_path, label_path, foreground=255, train="0:4", val="4:", roi=(1, 0, 5, 32)
        )  # rows 1..5: no membrane row


def test_load_dataset_names_the_bad_split(tmp_path: Path) -> None:
    image_path, label_path = _pair(tmp_path, random_stack(6), membrane_labels(6))
    with _raises("data.split.test.*reaches past"):
        dataset.load_dataset(image_path, label_path, foreground=255, train="0:4", val="4:", test="0:9")


@pytest.mark.skipif(not (ISBI / "train-labels.tif").exists(), reason="ISBI 2012 data absent")
def test_load_dataset_isbi() -> None:
    data = dataset.load_dataset(
        ISBI / "train-volume.tif", ISBI / "train-labels.tif", foreground=255, train="0:27", val="27:30"
    )
    assert data.train_images.shape == data.train_masks.shape == (27, 512, 512)
    assert data.val_images.shape == data.val_masks.shape == (3, 512, 512)
    interior = np.concatenate([data.train_masks, data.val_masks]).mean()
    assert 0.76 < interior < 0.80
    assert 0.0 <= data.train_images.min() and data.train_images.max() <= 1.0
    # membranes are darker than cell interiors
    assert data.train_images[~data.train_masks].mean() < data.train_images[data.train_masks].mean()
