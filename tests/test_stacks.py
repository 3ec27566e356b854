"""Tests of dcn_ray.io.tiff on real TIFF files written into tmp_path."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from tiffs import ISBI, RNG, membrane_labels, random_stack, write_tif

from dcn_ray.errors import InputError
from dcn_ray.io import tiff as stacks
from dcn_ray.io.tiff_writer import StackWriter, write_stack


def _raises(match: str, path: Path | None = None):
    """pytest.raises(InputError) whose message names the problem and, if given, the file."""
    pattern = match if path is None else f"{re.escape(str(path))}.*{match}"
    return pytest.raises(InputError, match=pattern)


# ---------------------------------------------------------------- file errors


@pytest.mark.parametrize(
    "read",
    [
        stacks.read_stack,
        stacks.stack_shape,
        lambda p: list(stacks.iter_slices(p)),
        lambda p: stacks.read_labels(p, 255),
    ],
)
def test_missing_file(tmp_path: Path, read) -> None:
    path = tmp_path / "nope.tif"
    with _raises("no such file", path):
        read(path)


def test_text_file_named_tif_is_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels\n")
    with _raises("not a TIFF file", path):
        stacks.read_stack(path)
    with _raises("not a TIFF file", path):
        stacks.read_labels(path, 255)


def test_empty_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.touch()
    with _raises(r"empty \(0 bytes\)", path):
        stacks.read_stack(path)
    with _raises("is a folder", tmp_path):
        stacks.read_stack(tmp_path)


@pytest.mark.parametrize("writer", ["tifffile", "tifffile-zlib", "stackwriter"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_tiff_is_detected(tmp_path: Path, writer: str, keep: float) -> None:
    whole = tmp_path / "whole.tif"
    if writer == "stackwriter":
        write_stack(whole, random_stack(6))
    else:
        write_tif(tmp_path, "whole.tif", random_stack(6), compression="zlib" if "zlib" in writer else None)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    for read in (
        stacks.read_stack,
        stacks.stack_shape,
        lambda p: list(stacks.iter_slices(p)),
        lambda p: stacks.read_labels(p, 255),
    ):
        with _raises("truncated|damaged", cut):
            read(cut)


def test_tiff_cut_anywhere_in_its_trailing_page_list_is_detected(tmp_path: Path, caplog) -> None:
    # tifffile writes an uncompressed stack's pixels first and the IFDs of pages 2.. after them:
    # a cut there leaves every pixel present, but the file is still damaged
    whole = write_tif(tmp_path, "whole.tif", random_stack(5, 64, 64))
    with tifffile.TiffFile(whole) as tif:
        first_ifd = tif.pages[1].offset
    raw = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    for end in range(first_ifd, len(raw) - 20):  # the last 20 bytes hold no page
        cut.write_bytes(raw[:end])
        with _raises("truncated|damaged", cut):
            stacks.read_stack(cut)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # one message, ours


def test_corrupt_compressed_data(tmp_path: Path) -> None:
    path = write_tif(tmp_path, "bad.tif", random_stack(3), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[1].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    with _raises("damaged", path):
        stacks.read_stack(path)
    with _raises("damaged", path):
        list(stacks.iter_slices(path))


def test_four_dimensional_stack_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path, "4d.tif", RNG.integers(0, 255, (2, 3, 8, 8), dtype=np.uint8))
    with _raises("4-D", path):
        stacks.read_stack(path)
    with _raises("4-D", path):
        stacks.stack_shape(path)


def test_empty_stack_is_refused(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        path = write_tif(tmp_path, "zero.tif", np.zeros((0, 8, 8), np.uint8))
    with _raises("empty stack", path):
        stacks.read_stack(path)


def test_pages_of_different_shapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(random_stack(1)[0], metadata=None)
        tw.write(random_stack(1, 12, 12)[0], metadata=None)
    with _raises("different shapes", path):
        stacks.read_stack(path)


# ---------------------------------------------------------------- normalisation


def test_uint8_uint16_and_2d(tmp_path: Path) -> None:
    data = random_stack()
    got = stacks.read_stack(write_tif(tmp_path, "u8.tif", data))
    assert got.dtype == np.float32 and got.shape == data.shape
    np.testing.assert_allclose(got, data / 255.0, atol=1e-6)
    data16 = np.array([[0, 1000], [30000, 65535]], np.uint16)
    got16 = stacks.read_stack(write_tif(tmp_path, "u16.tif", data16))
    assert got16.shape == (1, 2, 2)  # a single 2-D image is one slice
    np.testing.assert_allclose(got16[0], data16 / 65535.0, atol=1e-6)


def test_float_and_signed_scaling(tmp_path: Path) -> None:
    inside = RNG.random((3, 8, 8)).astype(np.float32) * 0.5 + 0.2
    np.testing.assert_array_equal(stacks.read_stack(write_tif(tmp_path, "f.tif", inside)), inside)
    outside = np.linspace(-3.0, 5.0, 3 * 8 * 8).reshape(3, 8, 8)
    got = stacks.read_stack(write_tif(tmp_path, "f64.tif", outside))
    np.testing.assert_allclose(got, (outside + 3.0) / 8.0, atol=1e-6)
    assert got.min() == 0.0 and got.max() == 1.0
    constant = stacks.read_stack(write_tif(tmp_path, "c.tif", np.full((2, 4, 4), 7.5, np.float32)))
    assert not constant.any()
    signed = np.array([[-100, 0], [50, 100]], np.int16)
    np.testing.assert_allclose(stacks.read_stack(write_tif(tmp_path, "i16.tif", signed))[0], (signed + 100) / 200.0)
    positive = np.array([[0, 32767]], np.int16)
    np.testing.assert_allclose(stacks.read_stack(write_tif(tmp_path, "p16.tif", positive))[0], [[0.0, 1.0]])


def test_min_is_white_is_inverted(tmp_path: Path) -> None:
    data = random_stack(2)
    got = stacks.read_stack(write_tif(tmp_path, "white.tif", data, photometric="miniswhite"))
    np.testing.assert_allclose(got, 1.0 - data / 255.0, atol=1e-6)


def test_nan_is_refused(tmp_path: Path) -> None:
    data = np.zeros((2, 4, 4), np.float32)
    data[1, 2, 2] = np.nan
    path = write_tif(tmp_path, "nan.tif", data)
    with _raises("NaN", path):
        stacks.read_stack(path)
    with _raises("NaN", path):
        list(stacks.iter_slices(path))


@pytest.mark.parametrize("planar", [False, True])
def test_rgb_image_becomes_luminance(tmp_path: Path, planar: bool) -> None:
    rgb = RNG.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    stored = np.moveaxis(rgb, -1, 1) if planar else rgb
    path = write_tif(tmp_path, "rgb.tif", stored, photometric="rgb", planarconfig="separate" if planar else "contig")
    expected = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    got = stacks.read_stack(path)
    assert got.shape == (3, 8, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert stacks.stack_shape(path) == (3, 8, 10)
    np.testing.assert_array_equal(np.stack(list(stacks.iter_slices(path))), got)


# ---------------------------------------------------------------- labels


def test_integer_foreground(tmp_path: Path) -> None:
    labels = membrane_labels()
    mask = stacks.read_labels(write_tif(tmp_path, "l.tif", labels), 255)
    assert mask.dtype == bool and mask.shape == labels.shape
    np.testing.assert_array_equal(mask, labels == 255)
    np.testing.assert_array_equal(stacks.read_labels(tmp_path / "l.tif", 0), labels == 0)
    with _raises(r"no pixel has the foreground value 7 \(values present: 0, 255\)", tmp_path / "l.tif"):
        stacks.read_labels(tmp_path / "l.tif", 7)


def test_colour_labels(tmp_path: Path) -> None:
    rgb = np.zeros((2, 4, 5, 3), np.uint8)  # black background
    rgb[:, 0] = 255  # white row: not coloured
    rgb[:, 1] = (120, 128, 124)  # slightly tinted grey (spread 8): not coloured
    rgb[:, 2, :2] = (200, 30, 30)  # red
    rgb[:, 3, 3:] = (0, 0, 90)  # dark blue
    expected = np.zeros((2, 4, 5), bool)
    expected[:, 2, :2] = expected[:, 3, 3:] = True
    path = write_tif(tmp_path, "colour.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(stacks.read_labels(path, "color"), expected)
    rgba = np.concatenate([rgb, np.full((2, 4, 5, 1), 255, np.uint8)], axis=-1)
    rgba[:, 2, 0, 3] = 0  # a transparent red pixel is background
    expected[:, 2, 0] = False
    path = write_tif(tmp_path, "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(stacks.read_labels(path, "color"), expected)
    with _raises("RGB; use foreground 'color'", path):
        stacks.read_labels(path, 255)


def test_palette_colour_labels(tmp_path: Path) -> None:
    indices = np.array([[[0, 1, 2, 3]]], np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = 65535  # white
    colormap[0, 2] = 65535  # red
    colormap[:, 3] = (0, 40000, 40000)  # teal
    path = write_tif(tmp_path, "pal.tif", indices, photometric="palette", colormap=colormap)
    np.testing.assert_array_equal(stacks.read_labels(path, "color")[0, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(stacks.read_labels(path, 2)[0, 0], [0, 0, 1, 0])


def test_colour_foreground_on_grey_labels_and_bad_foreground(tmp_path: Path) -> None:
    path = write_tif(tmp_path, "grey.tif", membrane_labels())
    with _raises("'color' needs RGB labels", path):
        stacks.read_labels(path, "color")
    with _raises("foreground must be .*'blue'"):
        stacks.read_labels(path, "blue")
    with _raises("foreground must be"):
        stacks.read_labels(path, 2.5)  # type: ignore[arg-type]


@pytest.mark.skipif(not (ISBI / "train-volume.tif").exists(), reason="ISBI 2012 data absent")
def test_stack_shape_isbi() -> None:
    assert stacks.stack_shape(ISBI / "train-volume.tif") == (30, 512, 512)


# ---------------------------------------------------------------- streaming and writing


@pytest.mark.parametrize("kind", ["uint8", "float-wide", "imagej", "2d"])
def test_iter_slices_equals_read_stack(tmp_path: Path, kind: str) -> None:
    data = {
        "uint8": random_stack(5),
        "float-wide": RNG.normal(0, 100, (4, 9, 7)),
        "imagej": random_stack(3),
        "2d": random_stack(1)[0],
    }[kind]
    path = write_tif(tmp_path, "s.tif", data, imagej=kind == "imagej")
    whole = stacks.read_stack(path)
    slices = list(stacks.iter_slices(path))
    assert len(slices) == stacks.stack_shape(path)[0] == len(whole)
    assert all(s.dtype == np.float32 and s.shape == whole.shape[1:] for s in slices)
    np.testing.assert_array_equal(np.stack(slices), whole)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, bool])
def test_stackwriter_round_trip(tmp_path: Path, dtype) -> None:
    data = (RNG.random((11, 6, 9)) * 200).astype(dtype)
    path = tmp_path / "out.tif"
    metadata = {"model": "k4-8-16", "kernels": [4, 8, 16], "iou": 0.71}
    with StackWriter(path, metadata=metadata) as writer:
        for page in data:
            writer.write(page)
    back = tifffile.imread(path)
    assert back.shape == (11, 6, 9)
    expected = data.astype(np.uint8) * 255 if dtype is bool else data
    np.testing.assert_array_equal(back, expected)
    assert stacks.read_metadata(path) == metadata
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_write_stack_single_slice_and_no_metadata(tmp_path: Path) -> None:
    path = tmp_path / "one.tif"
    write_stack(path, np.eye(5, dtype=np.uint8))
    assert tifffile.imread(path).shape == (1, 5, 5)
    assert stacks.read_metadata(path) == {}
    assert stacks.read_metadata(write_tif(tmp_path, "plain.tif", random_stack())) == {}


def test_failing_with_block_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with StackWriter(path) as writer:
            writer.write(np.zeros((4, 4), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"previous result")
    with pytest.raises(ValueError, match="first page"):
        with StackWriter(path) as writer:
            writer.write(np.zeros((4, 4), np.uint8))
            writer.write(np.zeros((4, 5), np.uint8))
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]
    with pytest.raises(ValueError, match="no slice"):
        with StackWriter(tmp_path / "none.tif"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_writer_argument_errors(tmp_path: Path) -> None:
    with _raises("output folder .* does not exist"):
        with StackWriter(tmp_path / "missing" / "out.tif"):
            pass
    with pytest.raises(ValueError, match="JSON"):
        StackWriter(tmp_path / "out.tif", metadata={"bad": object()})
    with pytest.raises(ValueError, match="2-D uint8"):
        write_stack(tmp_path / "out.tif", np.zeros((2, 3, 3), np.int64))
    assert list(tmp_path.iterdir()) == []
