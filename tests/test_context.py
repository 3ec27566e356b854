"""Serial-section context (2.5-D): the neighbour rules, no held-out slice in training, the job key,
checkpoints, and context models that train, predict (TIFF, OME-Zarr, blocks, resume) and export."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import run_cli, small_job, train_job

from dcn_ray.core import checkpoint
from dcn_ray.core import context as serial
from dcn_ray.core.dataset import load_data, load_dataset
from dcn_ray.core.sampler import CropSampler, apply_transform
from dcn_ray.core.train import build_model
from dcn_ray.errors import InputError
from dcn_ray.job.config import job_from_dict
from dcn_ray.job.job_file import load_job
from dcn_ray.job.search_config import SearchConfig
from dcn_ray.job.search_space import check_search
from dcn_ray.job.sweep_grid import trial_job, variants
from dcn_ray.models.outputs import pad_forward

SPLIT = {"train": "0:7", "val": "8:9", "test": "10:12"}


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread (also what each Ray worker gets): the same float rounding everywhere,
    and no thread contention on a busy two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the rules


def test_reflection_at_the_stack_ends_and_in_short_stacks():
    assert serial.neighbours(0, 2, 10) == [2, 1, 0, 1, 2]
    assert serial.neighbours(9, 2, 10) == [7, 8, 9, 8, 7]
    assert serial.neighbours(5, 2, 10) == [3, 4, 5, 6, 7]
    assert serial.neighbours(0, 0, 10) == [0]
    assert serial.neighbours(0, 2, 1) == [0, 0, 0, 0, 0]  # a 2-D image: itself in every channel
    assert serial.neighbours(1, 3, 3) == [2, 1, 0, 1, 2, 1, 0]  # reflected again past the far end
    # a training slice reflects at the edge of its run of readable slices
    assert serial.training_neighbours(19, 2, 30, forbidden={21, 22, 23}) == [17, 18, 19, 20, 19]
    assert serial.training_neighbours(20, 1, 30, forbidden={21, 22, 23}) == [19, 20, 19]


def write_indexed_stack(folder, n_slices: int = 30, side: int = 16):
    """A stack whose slice z holds the value z everywhere (readable back from any input channel)."""
    images = np.repeat(np.arange(n_slices, dtype=np.uint8)[:, None, None], side * side, axis=1)
    images = images.reshape(n_slices, side, side)
    labels = np.zeros_like(images)
    labels[:, : side // 2] = 255
    tifffile.imwrite(folder / "images.tif", images, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels, photometric="minisblack")
    return folder / "images.tif", folder / "labels.tif"


@pytest.mark.parametrize(
    "split",
    [
        {"train": "0:20", "val": "21:24", "test": "25:30"},  # the ISBI CPU study's, a one-slice gap
        {"train": "0:21", "val": "21:24", "test": "24:30"},  # no gaps at all
        {"train": "5:25", "val": "0:3", "test": "27:30"},  # held-out blocks on both sides
        {"train": "0:30:2", "val": "1:30:4", "test": "3:30:4"},  # interleaved: the worst case
        {"train": "10:20", "val": "20:22"},  # no test split
    ],
)
@pytest.mark.parametrize("context", [1, 2, 3])
def test_no_validation_or_test_slice_ever_reaches_training_as_a_neighbour(tmp_path, split, context):
    images, labels = write_indexed_stack(tmp_path)
    data = load_dataset(images, labels, foreground=255, context=context, **split)
    read = {int(round(v * 255)) for v in np.unique(data.train_inputs)}
    held_out = set(data.val_slices) | set(data.test_slices)
    assert read and not read & held_out, f"training read held-out slices {sorted(read & held_out)}"
    assert data.train_inputs.shape == (len(data.train_slices), 2 * context + 1, 16, 16)
    # channel N is the slice itself; val and test read their neighbours exactly as prediction does
    np.testing.assert_array_equal(serial.centre(data.train_inputs), data.train_images)
    for name, slices in (("val", data.val_slices), ("test", data.test_slices)):
        if not slices:
            assert data.inputs(name) is None
            continue
        seen = np.rint(data.inputs(name)[:, :, 0, 0] * 255).astype(int)
        assert seen.tolist() == [serial.neighbours(z, context, 30) for z in slices]


def test_training_neighbours_may_lie_in_the_gap(tmp_path):
    images, labels = write_indexed_stack(tmp_path)
    data = load_dataset(images, labels, foreground=255, context=2, train="0:20", val="21:24", test="25:30")
    last = np.rint(data.train_inputs[-1, :, 0, 0] * 255).astype(int).tolist()
    assert last == [17, 18, 19, 20, 19]  # slice 20 (the gap) is read, slice 21 (validation) reflected away


def test_streamed_windows_and_blocks_equal_the_whole_stack_rule():
    stack = np.random.default_rng(0).random((7, 5, 4)).astype(np.float32)
    for context in (1, 2, 4):
        whole = serial.gather(stack, [serial.neighbours(z, context, 7) for z in range(7)])
        np.testing.assert_array_equal(np.stack(list(serial.windows(iter(stack), context, 7))), whole)
        for start, stop in ((0, 2), (2, 5), (5, 7)):
            first, last = serial.read_span(start, stop, context, 7)
            block = serial.block_inputs(stack[first:last], first, start, stop, context, 7)
            np.testing.assert_array_equal(block, whole[start:stop])


def test_every_channel_of_a_crop_gets_the_same_flip_and_rotation():
    base = torch.rand(4, 64, 64)
    images = torch.stack([base + c for c in range(5)], dim=1)  # channel c = slice + c
    masks = base > 0.5
    generator = torch.Generator().manual_seed(3)
    sampler = CropSampler(images, masks, crop=32, batch_size=16, transforms="dihedral8", generator=generator)
    crops = sampler.draw()
    x, y = sampler.cut(crops)
    assert x.shape == (16, 5, 32, 32)
    for c in range(5):
        torch.testing.assert_close(x[:, c] - x[:, 0], torch.full_like(x[:, 0], float(c)), atol=1e-5, rtol=0)
    single = CropSampler(base, masks, crop=32, batch_size=16, transforms="dihedral8")
    x0, y0 = single.cut(crops)  # the same crops of the slice alone: channel 0 and the labels match
    torch.testing.assert_close(x[:, 0], x0[:, 0], atol=0, rtol=0)
    assert torch.equal(y, y0)
    for b in range(16):  # and the crop really is the transformed window of every channel
        t, z, top, left = (int(v[b]) for v in (crops.t, crops.z, crops.top, crops.left))
        window = images[z, :, top : top + 32, left : left + 32]
        torch.testing.assert_close(x[b], apply_transform(window, t), atol=0, rtol=0)


# ----------------------------------------------------------------------------- the job key


def test_context_is_a_job_key_validated_set_and_searched(synthetic_stack, tmp_path):
    import yaml

    raw = small_job(*synthetic_stack)
    job = job_from_dict(raw)
    assert job.model.context == 0 and job.flat()["model.context"] == 0
    assert build_model(job.model, (4, 8, 16), seed=0).kwargs["in_channels"] == 1  # today's model
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    set_two = load_job(tmp_path / "job.yaml", ["model.context=2"])
    assert set_two.model.context == 2
    assert build_model(set_two.model, (4, 8, 16), seed=0).kwargs["in_channels"] == 5
    for bad in (-1, 9, "two", True, 1.5):
        with pytest.raises(InputError, match="model.context"):
            job_from_dict(small_job(*synthetic_stack, model={"context": bad}))
    searched = small_job(*synthetic_stack, sweep={"kernels": [[4, 8, 16]], "grid": {"model.context": [0, 1, 2]}})
    grid = job_from_dict(searched)
    found = variants(grid)
    assert [v.name for v in found] == ["4-8-16_model.context=0", "4-8-16_model.context=1", "4-8-16_model.context=2"]
    assert [trial_job(grid, v.family, v.params, 0).model.context for v in found] == [0, 1, 2]
    # and a search space: every option is checked as the job it makes
    space = {"algorithm": "random", "trials": 3, "space": {"model.context": {"choice": [0, 1, 2]}}}
    one = job_from_dict(small_job(*synthetic_stack, sweep={"kernels": [[4, 8, 16]]}))
    check_search(one, SearchConfig.from_raw(space))
    with pytest.raises(InputError, match=r"sweep.search.space.model.context \(9\): model.context"):
        check_search(one, SearchConfig.from_raw({**space, "space": {"model.context": {"randint": [0, 10]}}}))


def test_checkpoints_record_the_context_and_old_ones_read_one_slice(tmp_path):
    model = build_model(job_from_dict(small_job("a.tif", "b.tif", model={"context": 1})).model, (4, 8, 16), seed=0)
    payload = checkpoint.model_payload(model, config={}, step=1, metrics={})
    assert payload["context"] == 1 and payload["model_kwargs"]["in_channels"] == 3
    old = {k: v for k, v in payload.items() if k != "context"}
    with pytest.raises(InputError, match="records context 0 but its model reads 3"):
        checkpoint.model_from_payload(old)
    single = build_model(job_from_dict(small_job("a.tif", "b.tif")).model, (4, 8, 16), seed=0)
    legacy = {
        k: v for k, v in checkpoint.model_payload(single, config={}, step=1, metrics={}).items() if k != "context"
    }
    assert checkpoint.model_from_payload(legacy).kwargs["in_channels"] == 1  # a checkpoint from before context


# ----------------------------------------------------------------------------- train, predict, export


def whole_stack(model, stack: np.ndarray, context: int, multiple: int) -> np.ndarray:
    """Whole-slice inference of every slice, each with its neighbours from the whole stack (no TTA)."""
    inputs = serial.gather(stack, [serial.neighbours(z, context, len(stack)) for z in range(len(stack))])
    with torch.no_grad():
        logits = [pad_forward(model, torch.from_numpy(x)[None], multiple).fused for x in inputs]
    return np.stack([torch.softmax(out, 1)[0, 1].numpy() for out in logits])


@pytest.fixture(scope="module", params=["dcn-context-2", "unet-context-1"])
def trained(request, synthetic_stack, tmp_path_factory):
    """A context-2 DCN and a context-1 U-Net, trained briefly (tiny) on a job with a test split."""
    model = {"context": 2} if request.param.startswith("dcn") else {"family": "unet", "depth": 2, "context": 1}
    raw = small_job(*synthetic_stack, name=request.param, data={"split": SPLIT}, model=model)
    raw["train"].update(steps=6, eval_every=6)
    job = job_from_dict(raw)
    dataset = load_data(job.data, context=job.model.context)
    kernels = (4, 8, 16) if model.get("family", "dcn") == "dcn" else None
    result = train_job(job, kernels, dataset)
    path = tmp_path_factory.mktemp(request.param) / checkpoint.MODEL_FILE
    checkpoint.save(result.model, path)
    return {"path": path, "context": job.model.context, "history": result.history}


def test_a_context_model_trains_and_predicts_what_whole_stack_inference_gives(
    trained, synthetic_stack, tmp_path, capsys
):
    from dcn_ray.io.tiff import read_stack

    model, payload = checkpoint.load_model(trained["path"])
    assert payload["context"] == trained["context"] and trained["history"][-1]["val_iou"] > 0
    stack = read_stack(synthetic_stack[0])
    common = ["--output", "float", "--no-tta", "--device", "cpu"]
    code, _, err = run_cli(capsys, ["predict", trained["path"], synthetic_stack[0], tmp_path / "out.tif", *common])
    assert code == 0, err
    predicted = tifffile.imread(tmp_path / "out.tif")
    from dcn_ray import models

    expected = whole_stack(model, stack, trained["context"], models.size_multiple(model))
    np.testing.assert_allclose(predicted, expected, atol=2e-6)
    # --slices: those slices alone, each read with its neighbours in the input (reflected at its ends)
    picked = tmp_path / "picked.tif"
    code, _, err = run_cli(
        capsys, ["predict", trained["path"], synthetic_stack[0], picked, *common, "--slices", "11,0,5"]
    )
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(picked), predicted[[11, 0, 5]])
    blocks = ["--chunk", "2,64,64", "--block", "64", "--slices", "3:8"]  # z blocks 3:5, 5:7, 7:8, halo beyond
    code, _, err = run_cli(
        capsys, ["predict", trained["path"], synthetic_stack[0], tmp_path / "p.ome.zarr", *common, *blocks]
    )
    assert code == 0, err
    import zarr

    part = zarr.open_array(store=str(tmp_path / "p.ome.zarr"), path="0", mode="r")[...]
    np.testing.assert_allclose(part, predicted[3:8], atol=2e-6)
    # OME-Zarr in blocks of 2 x 64 x 64: the z halo reads the neighbours of the block's edge slices
    import zarr

    args = ["predict", trained["path"], synthetic_stack[0], tmp_path / "out.ome.zarr", "--chunk", "2,64,64"]
    for tta in (["--no-tta"], []):
        code, _, err = run_cli(capsys, [*args, "--block", "64", "--output", "float", "--device", "cpu", *tta])
        assert code == 0, err
        blocked = zarr.open_array(store=str(tmp_path / "out.ome.zarr"), path="0", mode="r")[...]
        code, _, err = run_cli(
            capsys,
            [
                "predict",
                trained["path"],
                synthetic_stack[0],
                tmp_path / "ref.tif",
                "--output",
                "float",
                "--device",
                "cpu",
                *tta,
            ],
        )
        assert code == 0, err
        np.testing.assert_allclose(blocked, tifffile.imread(tmp_path / "ref.tif"), atol=2e-6)
    attrs = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r").attrs.asdict()["dcn_ray"]
    assert attrs["context"] == trained["context"]
    # suggest reads each slice with its neighbours too: its views average to the prediction
    code, _, err = run_cli(capsys, ["suggest", trained["path"], synthetic_stack[0], tmp_path / "next", "--top", "2"])
    assert code == 0, err
    assert tifffile.imread(tmp_path / "next" / "uncertainty.tif").shape == stack.shape
    if models.family_of(model).branches:  # inspect reads the validation slices with their neighbours
        import json

        code, _, err = run_cli(capsys, ["inspect", trained["path"], synthetic_stack[0], tmp_path / "look"])
        assert code == 0, err
        record = json.loads((tmp_path / "look" / "branch_scores.json").read_text())
        assert record["slices"] == [8] and len(record["scores"]) == 3


def test_a_context_model_exports_a_package_that_passes_bioimageio_test(trained, tmp_path, capsys):
    import zipfile

    import yaml

    bioimageio_core = pytest.importorskip("bioimageio.core")
    out = tmp_path / "model.zip"
    code, _, err = run_cli(capsys, ["export", trained["path"], out])
    assert code == 0, err
    summary = bioimageio_core.test_model(out)
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(out) as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        test_input = np.load(package.open(rdf["inputs"][0]["test_tensor"]["source"]))
    channels = 2 * trained["context"] + 1
    assert len(rdf["inputs"][0]["axes"][1]["channel_names"]) == channels and test_input.shape[:2] == (1, channels)
    assert rdf["config"]["dcn_ray"]["context"] == trained["context"]


@pytest.mark.integration
def test_on_ray_workers_and_resumed_a_context_prediction_equals_one_process(trained, synthetic_stack, tmp_path):
    import ray
    import zarr

    from dcn_ray.predict.engine import PredictOptions
    from dcn_ray.predict.stack import predict_stack
    from dcn_ray.predict.volume import predict_volume
    from dcn_ray.track.sources import load_source

    loaded = load_source(str(trained["path"]))
    images = synthetic_stack[0]
    options = PredictOptions(tta=False, output="float", device="cpu")
    blocks = {"chunks": (2, 64, 64), "block": 64}
    alone = predict_volume(loaded, images, tmp_path / "one.ome.zarr", options, **blocks)
    predict_stack(loaded, images, tmp_path / "one.tif", options)

    class Stopped(Exception):
        pass

    def stop_after_five(done: int, total: int, voxels: int) -> None:
        if done >= 5:
            raise Stopped

    with pytest.raises(Stopped):  # an interrupted run leaves an unfinished store
        predict_volume(loaded, images, tmp_path / "two.ome.zarr", options, progress=stop_after_five, **blocks)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        pooled = PredictOptions(tta=False, output="float")
        resumed = predict_volume(loaded, images, tmp_path / "two.ome.zarr", pooled, resume=True, workers=2, **blocks)
        streamed = predict_stack(loaded, images, tmp_path / "two.tif", pooled, workers=2)
    finally:
        ray.shutdown()
    assert resumed.skipped == 5 and resumed.blocks == alone.blocks == 6 * 2 * 2
    assert len(set(resumed.workers)) == 2 and len(set(streamed.workers)) == 2
    one = zarr.open_array(store=str(tmp_path / "one.ome.zarr"), path="0", mode="r")[...]
    two = zarr.open_array(store=str(tmp_path / "two.ome.zarr"), path="0", mode="r")[...]
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "two.tif"), tifffile.imread(tmp_path / "one.tif"))
    np.testing.assert_allclose(one, tifffile.imread(tmp_path / "one.tif"), atol=2e-6)
