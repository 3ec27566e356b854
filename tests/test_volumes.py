"""Volumes: OME-Zarr / zarr / HDF5 inputs, OME-Zarr outputs, blocks with halo, Ray workers, resume after a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray
import tifffile
import torch
import zarr
from conftest import run_cli
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr.writer import write_image

from dcn_ray import __version__
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_dataset
from dcn_ray.errors import InputError
from dcn_ray.io.omezarr import stored_settings
from dcn_ray.io.tiff import read_stack
from dcn_ray.io.volumes import open_volume, read_label_volume, read_volume
from dcn_ray.models.dcn import DCN
from dcn_ray.predict import blocks
from dcn_ray.predict.engine import PredictOptions, SlicePredictor
from dcn_ray.predict.volume import predict_volume
from dcn_ray.track.sources import load_source

pytestmark = pytest.mark.usefixtures("two_threads")
REPO = Path(__file__).resolve().parent.parent
SHAPE = (3, 75, 61)  # neither side a multiple of 8


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A narrow DCN (width 4) with random weights, saved as a checkpoint."""
    torch.manual_seed(0)
    model = DCN(kernels=(4, 8, 16), width=4).eval()
    payload = {
        "format": checkpoint.FORMAT,
        "model_kwargs": dict(model.kwargs),
        "kernels": [4, 8, 16],
        "weights": model.state_dict(),
        "config": {"data": {"foreground": 1}},
        "step": 3,
    }
    path = tmp_path_factory.mktemp("model") / checkpoint.MODEL_FILE
    checkpoint.save(payload, path)
    return path


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    smooth = np.cumsum(np.random.default_rng(0).normal(size=SHAPE), axis=2)
    return np.rint(np.interp(smooth, (smooth.min(), smooth.max()), (0, 255))).astype(np.uint8)


def write_ome(path: Path, array: np.ndarray, version: str, *, axes: str = "zyx", chunks=(1, 32, 32)) -> Path:
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    scale = {"t": 1.0, "c": 1.0, "z": 40.0, "y": 4.0, "x": 4.0}
    units = {name: "nanometer" for name in "zyx"}
    write_image(
        array, group, axes=axes, fmt=fmt, scale={a: scale[a] for a in axes}, axes_units=units,
        storage_options={"chunks": (1,) * (array.ndim - 3) + tuple(chunks)},
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def inputs(data, tmp_path_factory) -> dict[str, str]:
    """The same volume as TIFF, OME-Zarr 0.4 and 0.5, plain zarr v2 and v3, and HDF5 (CREMI layout)."""
    folder = tmp_path_factory.mktemp("inputs")
    tifffile.imwrite(folder / "in.tif", data, photometric="minisblack")
    write_ome(folder / "in04.ome.zarr", data, "0.4")
    write_ome(folder / "in05.ome.zarr", data, "0.5")
    for version in (2, 3):
        zarr.create_array(str(folder / f"plain{version}.zarr"), data=data, chunks=(1, 40, 40), zarr_format=version)
    with h5py.File(folder / "in.h5", "w") as handle:
        handle.create_dataset("volumes/raw", data=data, chunks=(1, 32, 32))
        handle["volumes/raw"].attrs["resolution"] = (40.0, 4.0, 4.0)
        handle.create_dataset("volumes/labels/clefts", data=(data > 128).astype(np.uint64))
    with h5py.File(folder / "one.h5", "w") as handle:
        handle.create_dataset("image", data=data)
    return {
        "tiff": str(folder / "in.tif"),
        "ome04": str(folder / "in04.ome.zarr"),
        "ome05": str(folder / "in05.ome.zarr"),
        "zarr2": str(folder / "plain2.zarr"),
        "zarr3": str(folder / "plain3.zarr"),
        "hdf5": f"{folder / 'in.h5'}:/volumes/raw",
        "hdf5_alone": str(folder / "one.h5"),
    }


def stored(path: Path, array: str = "0") -> np.ndarray:
    return zarr.open_array(store=str(path), path=array, mode="r")[...]


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", ["ome04", "ome05", "zarr2", "zarr3", "hdf5", "hdf5_alone"])
def test_every_format_reads_as_the_tiff_does(inputs, kind):
    volume = open_volume(inputs[kind])
    assert volume.shape == SHAPE
    expected = read_stack(inputs["tiff"])
    np.testing.assert_array_equal(volume.read(), expected)  # the same float32 values, bit for bit
    np.testing.assert_array_equal(volume.read(slice(1, 3), slice(8, 40), slice(5, 61)), expected[1:3, 8:40, 5:61])
    if kind.startswith("ome"):
        assert volume.scale == (40.0, 4.0, 4.0) and volume.chunks == (1, 32, 32)
        assert [a["name"] for a in volume.axes] == ["z", "y", "x"] and volume.axes[0]["unit"] == "nanometer"
        assert volume.version == kind[-2] + "." + kind[-1]
    if kind == "hdf5":
        assert volume.scale == (40.0, 4.0, 4.0)


def test_levels_five_dimensions_floats_and_labels(data, inputs, tmp_path):
    level1 = open_volume(inputs["ome05"], level=1)
    assert level1.shape == (3, 37, 30) and level1.scale[0] == 40.0 and level1.scale[1] > 7.9
    np.testing.assert_array_equal(level1.raw(), stored(Path(inputs["ome05"]), level1.array))
    five = write_ome(tmp_path / "tczyx.ome.zarr", data[None, None], "0.4", axes="tczyx")
    np.testing.assert_array_equal(read_volume(five), read_stack(inputs["tiff"]))
    one = open_volume(write_ome(tmp_path / "cyx.ome.zarr", data[1:2], "0.5", axes="cyx", chunks=(32, 32)))
    assert one.shape == (1, 75, 61) and one.scale == (1.0, 4.0, 4.0) and one.axes[0] == {"name": "z", "type": "space"}
    np.testing.assert_array_equal(one.read(), read_stack(inputs["tiff"])[1:2])
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        handle["f"] = data.astype(np.float32) * 3.0 - 100.0  # outside [0, 1]: min-max scaled
    scaled = read_volume(f"{tmp_path / 'f.h5'}:/f")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    truth = read_label_volume(inputs["hdf5"].replace("raw", "labels/clefts"), 1)
    np.testing.assert_array_equal(truth, data > 128)


def test_training_data_from_hdf5_and_ome_zarr_equals_tiff(data, inputs, tmp_path):
    labels = (data > 100).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    write_ome(tmp_path / "labels.ome.zarr", labels, "0.5")
    splits = {"foreground": 255, "train": "0:2", "val": "2:3"}
    from_tiff = load_dataset(inputs["tiff"], tmp_path / "labels.tif", **splits)
    from_volumes = load_dataset(inputs["hdf5"], tmp_path / "labels.ome.zarr", **splits)
    np.testing.assert_array_equal(from_volumes.train_images, from_tiff.train_images)
    np.testing.assert_array_equal(from_volumes.val_masks, from_tiff.val_masks)


# ----------------------------------------------------------------------------- blocks


def test_blocks_cover_the_volume_once_and_regions_keep_the_pooling_grid():
    shape, halo = (2, 301, 277), blocks.halo_for(54)
    assert halo == 56
    chunks = blocks.default_chunks(shape, (1, 64, 64))
    block = blocks.default_block(shape, chunks, tile=256, halo=halo)
    assert block == (1, 128, 128)  # the largest chunk multiple with block + 2 * halo <= tile
    covered = np.zeros(shape, np.int32)
    for item in blocks.iter_blocks(shape, block, halo):
        covered[item.core] += 1
        for region, core, length in ((item.rows, item.core[1], 301), (item.cols, item.core[2], 277)):
            assert region.start % 8 == 0 and (length - region.stop) % 8 == 0
            assert core.start - region.start >= min(halo, core.start)
            assert region.stop - core.stop >= min(halo, length - core.stop)
    assert (covered == 1).all()
    assert blocks.default_block(shape, chunks, tile=512, halo=halo) == (1, 301, 277)  # whole slices fit a tile
    with pytest.raises(InputError, match="multiple of 8"):
        blocks.default_chunks(shape, (1, 60, 64))
    with pytest.raises(InputError, match="multiple of the chunk"):
        blocks.default_block(shape, chunks, tile=512, halo=halo, block=100)


@pytest.mark.parametrize("tta", [False, True])
def test_blocks_with_halo_equal_whole_slice_inference(model_file, inputs, tmp_path, tta):
    loaded = load_source(str(model_file))
    options = PredictOptions(tta=tta, output="float", device="cpu")
    result = predict_volume(loaded, inputs["ome04"], tmp_path / "out.ome.zarr", options, chunks=(1, 16, 16), block=16)
    assert result.blocks == 3 * 5 * 4 and result.voxels == np.prod(SHAPE)  # halo 56 > block: regions overlap a lot
    whole = SlicePredictor(loaded.model, options)
    expected = np.stack([whole(image) for image in read_stack(inputs["tiff"])])
    np.testing.assert_allclose(stored(tmp_path / "out.ome.zarr"), expected, atol=2e-6)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("kind,ngff", [("ome04", "0.4"), ("ome05", "0.5"), ("hdf5", "0.4")])
def test_predict_ome_zarr_and_hdf5_give_the_tiff_values(model_file, inputs, tmp_path, capsys, kind, ngff):
    common = ["--output", "float", "--no-tta", "--device", "cpu"]
    code, _, err = run_cli(capsys, ["predict", model_file, inputs["tiff"], tmp_path / "ref.tif", *common])
    assert code == 0, err
    output = tmp_path / "out.ome.zarr"
    args = ["predict", model_file, inputs[kind], output, *common, "--ngff", ngff, "--chunk", "1,32,32", "--block", "32"]
    code, _, err = run_cli(capsys, [*args, "--label-image"])
    assert code == 0, err
    np.testing.assert_allclose(stored(output), tifffile.imread(tmp_path / "ref.tif"), atol=2e-6)
    np.testing.assert_array_equal(stored(output, "labels/mask/0"), stored(output) > 0.5)
    assert not list(tmp_path.glob(".*"))  # no .incomplete store left behind
    # ome-zarr-py reads the output: the image, its axes and scale from the input, the label image
    location = parse_url(str(output), fmt=FormatV04() if ngff == "0.4" else FormatV05())
    assert location.version == ngff
    nodes = list(Reader(location)())
    image = next(node for node in nodes if node.load(Multiscales) and not node.load(Label))
    assert image.data[0].shape == SHAPE and image.data[0].dtype == np.float32
    assert [axis["name"] for axis in image.metadata["axes"]] == ["z", "y", "x"]
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [40.0, 4.0, 4.0]
    label = next(node for node in nodes if node.load(Label))
    np.testing.assert_array_equal(np.asarray(label.data[0]), stored(output, "labels/mask/0"))
    attrs = zarr.open_group(str(output), mode="r").attrs.asdict()["dcn_ray"]
    assert attrs["complete"] is True and attrs["kernels"] == [4, 8, 16] and attrs["model"] == str(model_file)
    assert attrs["dcn_ray_version"] == __version__ and attrs["tta"] is False and attrs["output"] == "float"
    assert attrs["input"] == inputs[kind] and len(attrs["model_sha256"]) == 64
    assert "dcn_ray_blocks" not in zarr.open_group(str(output), mode="r")


def test_uint8_probabilities_and_masks_match_the_tiff_outputs(model_file, inputs, tmp_path, capsys):
    for kind in ("probabilities", "mask"):
        tiff, zarr_out = tmp_path / f"{kind}.tif", tmp_path / f"{kind}.ome.zarr"
        for source, target in ((inputs["tiff"], tiff), (inputs["zarr3"], zarr_out)):
            code, _, err = run_cli(capsys, ["predict", model_file, source, target, "--output", kind, "--no-tta"])
            assert code == 0, err
        reference = tifffile.imread(tiff)
        assert stored(zarr_out).dtype == np.uint8
        assert np.abs(stored(zarr_out).astype(int) - reference).max() <= (1 if kind == "probabilities" else 0)


def test_bad_inputs_exit_2_with_one_line(model_file, inputs, data, tmp_path, capsys):
    (tmp_path / "empty.zarr").mkdir()
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w").create_array("raw", shape=(2, 8, 8), dtype="uint8")
    zarr.create_array(str(tmp_path / "4d.zarr"), data=np.zeros((2, 2, 8, 8), np.uint8))
    (tmp_path / "theirs.ome.zarr").mkdir()
    (tmp_path / "theirs.ome.zarr" / "keep.txt").write_text("not ours")
    h5 = inputs["hdf5"].split(":")[0]
    out = tmp_path / "out.ome.zarr"
    cases = [
        ([f"{h5}:/volumes/nothing", out], "no such dataset"),
        ([f"{h5}:/volumes", out], "is a group"),
        ([h5, out], "name the dataset"),
        ([f"{tmp_path / 'missing.h5'}:/raw", out], "missing.h5: no such file"),
        ([tmp_path / "empty.zarr", out], "not a zarr store"),
        ([tmp_path / "group.zarr", out], "without OME-Zarr multiscales"),
        ([tmp_path / "4d.zarr", out], "expected a 2-D image or a 3-D volume"),
        ([inputs["ome04"], out, "--level", "9"], "--level 9"),
        ([inputs["tiff"], out, "--level", "1"], "one level only"),
        ([inputs["tiff"], tmp_path / "theirs.ome.zarr"], "did not write"),
        ([inputs["tiff"], tmp_path / "out.tif", "--resume"], "--resume: only for OME-Zarr"),
        ([inputs["tiff"], out, "--chunk", "1,30,32"], "multiple of 8"),
        ([inputs["tiff"], out, "--chunk", "1,32"], "--chunk 1,32"),
        ([inputs["tiff"], out, "--labels", inputs["hdf5"].replace("raw", "nope")], "no such dataset"),
        ([inputs["ome04"], inputs["ome04"]], "is the input"),
    ]
    for args, named in cases:
        code, _, err = run_cli(capsys, ["predict", model_file, *args])
        lines = [line for line in err.splitlines() if line.startswith("dcn-ray:")]
        assert code == 2 and len(lines) == 1 and named in lines[0], (args, err)
        assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert (tmp_path / "theirs.ome.zarr" / "keep.txt").exists()


def test_an_earlier_output_is_replaced_whole_and_resume_of_a_complete_one_does_nothing(
    model_file, inputs, tmp_path, capsys
):
    output = tmp_path / "out.ome.zarr"
    first = ["predict", model_file, inputs["tiff"], output, "--no-tta", "--output", "float"]
    assert run_cli(capsys, first)[0] == 0
    code, _, err = run_cli(capsys, [*first[:-1], "mask"])
    assert code == 0, err
    assert set(np.unique(stored(output))) <= {0, 255}  # replaced by the mask
    code, _, err = run_cli(capsys, [*first[:-1], "mask", "--resume"])
    assert code == 0 and "0 voxels predicted" in err, err


def test_labels_score_the_written_store_as_dcn_ray_score_does(model_file, inputs, tmp_path, capsys):
    truth, output = inputs["hdf5"].replace("raw", "labels/clefts"), tmp_path / "out.ome.zarr"
    code, out, err = run_cli(capsys, ["predict", model_file, inputs["ome05"], output, "--no-tta", "--labels", truth])
    assert code == 0, err
    code, scored, err = run_cli(capsys, ["score", output, truth, "--foreground", "1"])
    assert code == 0, err
    assert "IoU" in out and out.strip() == scored.strip()


# ----------------------------------------------------------------------------- Ray and resume


@pytest.mark.integration
def test_ray_workers_write_their_own_blocks_and_equal_one_process(model_file, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the workers get absolute ones
    shutil.copy(inputs["hdf5"].split(":")[0], "in.h5")
    loaded = load_source(str(model_file))
    options = PredictOptions(tta=False, output="float", device="cpu")
    torch.set_num_threads(1)  # as each Ray worker (num_cpus=1): the same float rounding
    alone = predict_volume(loaded, "in.h5:/volumes/raw", Path("one.ome.zarr"), options, chunks=(1, 32, 32), block=32)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        pooled = predict_volume(
            loaded, "in.h5:/volumes/raw", Path("two.ome.zarr"), PredictOptions(tta=False, output="float"),
            chunks=(1, 32, 32), block=32, workers=2,
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert set(alone.workers) == {"local"} and len(set(pooled.workers)) == 2
    assert all(" gpu " in name for name in pooled.workers) and pooled.blocks == alone.blocks == 18
    np.testing.assert_array_equal(stored(tmp_path / "two.ome.zarr"), stored(tmp_path / "one.ome.zarr"))


@pytest.mark.integration
def test_a_killed_prediction_resumes_to_the_identical_result(model_file, tmp_path, capsys):
    data = np.random.default_rng(5).integers(0, 256, (8, 96, 96), dtype=np.uint8)
    source = write_ome(tmp_path / "in.ome.zarr", data, "0.5")
    output, incomplete = tmp_path / "out.ome.zarr", tmp_path / ".out.ome.zarr.incomplete"
    args = [model_file, source, output, "--chunk", "1,32,32", "--block", "32", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dcn_ray", "predict", *map(str, args)]
    process = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = int(stored(incomplete, "dcn_ray_blocks").sum())
        except Exception:  # not created yet
            done = 0
        if done >= 10:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert 10 <= done < 72 and not output.exists() and incomplete.exists()
    attrs = zarr.open_group(str(incomplete), mode="r").attrs.asdict()["dcn_ray"]
    assert attrs["complete"] is False
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    skipped = int(resumed.stderr.split(" written before")[0].rsplit(", ", 1)[1])
    assert skipped >= done and not incomplete.exists()
    fresh = subprocess.run(
        [*command[:6], str(tmp_path / "fresh.ome.zarr"), *command[7:]],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr
    np.testing.assert_array_equal(stored(output), stored(tmp_path / "fresh.ome.zarr"))
    # --resume against other settings is refused rather than mixing two predictions
    process = subprocess.Popen([*command, "--no-tta"], env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    while stored_settings(incomplete) is None and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    code, _, err = run_cli(capsys, ["predict", *args, "--resume"])
    assert code == 2 and "other settings (tta false then, true now)" in err, err
