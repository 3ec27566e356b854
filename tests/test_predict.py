"""`dcn-ray predict`: tiled = whole slice, TTA-equivariant, any size and type, streamed, scored, on Ray."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import ray
import tifffile
import torch
from conftest import run_cli, small_job, train_job

from dcn_ray import __version__
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.scores import segmentation_scores
from dcn_ray.errors import InputError
from dcn_ray.io.tiff import read_metadata
from dcn_ray.job.config import job_from_dict
from dcn_ray.models import dcn_receptive_radius as receptive_radius
from dcn_ray.models.dcn import DCN, MULTIPLE
from dcn_ray.models.outputs import pad_forward
from dcn_ray.predict.engine import PredictOptions, SlicePredictor, edge_weights, tile_starts
from dcn_ray.predict.ray_pool import PredictorWorker, ordered_map
from dcn_ray.predict.stack import predict_stack
from dcn_ray.track.sources import load_source

pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def model_file(synthetic_stack, tmp_path_factory) -> Path:
    """A narrow DCN trained for a few steps (real batch-norm statistics), saved as a checkpoint."""
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 8, "eval_every": 8, "threads": 2}))
    result = train_job(job, (4, 8, 16), load_data(job.data))
    path = tmp_path_factory.mktemp("model") / checkpoint.MODEL_FILE
    checkpoint.save(result.model, path)
    return path


def whole_slice(model: DCN, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = pad_forward(model, torch.from_numpy(image)[None, None], MULTIPLE).fused
    return torch.softmax(logits, 1)[0, 1].numpy()


# ----------------------------------------------------------------------------- tiling


def test_tiles_start_on_the_pooling_grid_and_windows_cover_every_pixel():
    starts = tile_starts(408, 232, 112)
    assert starts == [0, 120, 176] and all(s % 8 == 0 for s in starts)
    assert tile_starts(200, 232, 112) == [0]
    total = np.zeros(408)
    for start in starts:
        w = edge_weights(232, inner_before=start > 0, inner_after=start + 232 < 408, overlap=112, margin=54)
        if start > 0:
            assert not w[:54].any() and w[54] > 0
        if start + 232 < 408:
            assert not w[-54:].any()
        total[start : start + 232] += w
    assert (total > 0).all()


@pytest.mark.parametrize("kernels", [(4, 8, 16), (2, 4, 17), (4, 8, 40), (5, 13, 27)])
def test_receptive_radius_bounds_the_reach_of_a_pixel(kernels):
    torch.manual_seed(0)
    model = DCN(kernels=kernels, width=8, batch_norm=False).eval()
    size, reach = 256, 0
    x = torch.rand(1, 1, size, size)
    with torch.no_grad():
        base = model(x).fused
        for offset in range(0, 8, 3):
            centre = size // 2 + offset
            nudged = x.clone()
            nudged[0, 0, centre, centre] += 5.0
            rows, cols = torch.nonzero((model(nudged).fused - base).abs().amax(1)[0] > 0, as_tuple=True)
            reach = max(
                reach,
                centre - rows.min().item(),
                rows.max().item() - centre,
                centre - cols.min().item(),
                cols.max().item() - centre,
            )
    assert 40 < reach <= receptive_radius(kernels)


def test_tiled_prediction_equals_the_whole_slice(model_file):
    model, _ = checkpoint.load_model(model_file)
    image = np.random.default_rng(0).random((403, 341), dtype=np.float32)  # not multiples of 8
    tiled = SlicePredictor(model, PredictOptions(tile=232, overlap=112, tta=False, device="cpu"))
    assert tiled.margin == receptive_radius((4, 8, 16)) == 54
    expected = whole_slice(model, image)
    np.testing.assert_allclose(tiled(image), expected, atol=1e-4)
    # too little overlap: seams show, which is what the default overlap prevents
    seams = SlicePredictor(model, PredictOptions(tile=232, overlap=16, tta=False, device="cpu"))(image)
    assert np.abs(seams - expected).max() > 1e-3


def test_tta_is_equivariant_to_flips_and_rotations(model_file):
    model, _ = checkpoint.load_model(model_file)
    image = np.random.default_rng(1).random((67, 45), dtype=np.float32)
    with_tta = SlicePredictor(model, PredictOptions(tta=True, device="cpu"))
    without = SlicePredictor(model, PredictOptions(tta=False, device="cpu"))
    base = with_tta(image)
    assert base.shape == (67, 45) and 0.0 <= base.min() and base.max() <= 1.0
    for flip in (np.fliplr, np.flipud, lambda a: np.rot90(a, 1), np.transpose):
        np.testing.assert_allclose(with_tta(np.ascontiguousarray(flip(image))), flip(base), atol=1e-5)
    assert np.abs(without(np.ascontiguousarray(np.fliplr(image))) - np.fliplr(without(image))).max() > 1e-3


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_stack_of_odd_size_through_the_cli(model_file, tmp_path, capsys, dtype):
    rng = np.random.default_rng(2)
    stack = rng.random((3, 67, 45), dtype=np.float32)
    stored = stack if dtype == "float32" else np.rint(stack * np.iinfo(dtype).max).astype(dtype)
    tifffile.imwrite(tmp_path / "in.tif", stored, photometric="minisblack")
    code, _, err = run_cli(
        capsys, ["predict", model_file, tmp_path / "in.tif", tmp_path / "out.tif", "--no-tta", "--output", "float"]
    )
    assert code == 0, err
    written = tifffile.imread(tmp_path / "out.tif")
    assert written.shape == (3, 67, 45) and written.dtype == np.float32
    model, _ = checkpoint.load_model(model_file)
    scale = 1.0 if dtype == "float32" else np.iinfo(dtype).max
    expected = whole_slice(model, (stored[1] / scale).astype(np.float32))
    np.testing.assert_allclose(written[1], expected, atol=1e-5)
    assert "slices/s" in err
    meta = read_metadata(tmp_path / "out.tif")
    assert meta["model"] == str(model_file) and meta["kernels"] == [4, 8, 16]
    assert meta["dcn_ray_version"] == __version__ and meta["output"] == "float"
    assert not list(tmp_path.glob(".*partial*"))


def test_two_dimensional_image_and_the_three_outputs(model_file, tmp_path, capsys):
    image = np.random.default_rng(3).integers(0, 256, (50, 70), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "one.tif", image)
    pages, threshold = {}, "0.5"
    for kind in ("float", "probabilities", "mask"):
        code, _, err = run_cli(
            capsys,
            [
                "predict",
                model_file,
                tmp_path / "one.tif",
                tmp_path / f"{kind}.tif",
                "--output",
                kind,
                "--threshold",
                threshold,
            ],
        )
        assert code == 0, err
        pages[kind] = tifffile.imread(tmp_path / f"{kind}.tif")
        threshold = f"{float(np.median(pages['float'])):.6f}"  # splits the mask in about two halves
    probability = pages["float"]
    assert probability.shape in ((50, 70), (1, 50, 70)) and probability.dtype == np.float32
    assert pages["probabilities"].dtype == np.uint8 and pages["mask"].dtype == np.uint8
    np.testing.assert_array_equal(pages["probabilities"], np.rint(probability * 255).astype(np.uint8))
    np.testing.assert_array_equal(pages["mask"], np.where(probability > float(threshold), 255, 0).astype(np.uint8))
    assert 0.3 < np.count_nonzero(pages["mask"]) / pages["mask"].size < 0.7
    assert read_metadata(tmp_path / "mask.tif")["threshold"] == float(threshold)


def constant_model_file(folder: Path, *, foreground: int, **data: int) -> Path:
    """A DCN whose foreground probability is e^3 / (1 + e^3) = 0.953 everywhere, foreground label ``foreground``."""
    model = DCN(kernels=(4, 8, 16), width=4).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for branch in model.branches:
            branch.classify.bias.copy_(torch.tensor([0.0, 1.0]))
    payload = {
        "format": checkpoint.FORMAT,
        "model_kwargs": dict(model.kwargs),
        "kernels": [4, 8, 16],
        "weights": model.state_dict(),
        "config": {"data": {"foreground": foreground, **data}},
        "step": 0,
    }
    checkpoint.save(payload, folder / checkpoint.MODEL_FILE)
    return folder / checkpoint.MODEL_FILE


def test_labels_scores_by_hand(tmp_path, capsys):
    """All-foreground prediction against two 8x4 cells in an 8x16 slice (label value 7, from the model's config).

    IoU 64/128 = 0.5; Dice 2*64/(128+64) = 2/3; membrane IoU 0; pixel error 0.5; inside the cells
    the prediction is one cluster and the truth two cells of 32: TP = 2 * 32^2, FP = 64^2 - TP,
    FN = 0, so V_rand = 2 TP / (2 TP + FP) = 2/3; I(S;T) = 0 so V_info = 0. A mask: every threshold
    gives the same, so 0.5 is reported. The baseline line: all-foreground is this very prediction.
    """
    model = constant_model_file(tmp_path, foreground=7)
    labels = np.zeros((8, 16), np.uint8)
    labels[:, 0:4] = labels[:, 8:12] = 7
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "image.tif", np.full((8, 16), 128, np.uint8))
    code, out, err = run_cli(
        capsys,
        [
            "predict",
            model,
            tmp_path / "image.tif",
            tmp_path / "mask.tif",
            "--output",
            "mask",
            "--labels",
            tmp_path / "labels.tif",
        ],
    )
    assert code == 0, err
    assert out.strip().splitlines() == [
        "threshold 0.5: IoU 0.5000  Dice 0.6667  pixel error 0.5000  membrane IoU 0.0000  V_rand (at 0.5) 0.6667  "
        "V_info (at 0.5) 0.0000  V_rand best 0.6667 (threshold 0.5)  "
        "V_rand slice-mean best (the challenge's) 0.6667 (threshold 0.5)  V_info best 0.0000 (threshold 0.5)",
        "baselines on the same 1 slice: all-foreground IoU 0.5000, all-background IoU 0.0000",
    ]
    mask = tifffile.imread(tmp_path / "mask.tif").reshape(8, 16) == 255
    assert mask.all()
    assert segmentation_scores(mask, labels == 7)["dice"] == pytest.approx(2 / 3)


def test_labels_of_a_larger_stack_are_cut_to_the_input_s_slices(tmp_path, capsys):
    """An input of 2 slices cut from a 4-slice stack: --label-slices names them; --target objects gives
    object scores (each slice: two truth objects, one predicted covering both: no match)."""
    model = constant_model_file(tmp_path, foreground=7)
    labels = np.zeros((4, 8, 16), np.uint8)
    labels[:, :, 0:4] = labels[:, :, 8:12] = 7
    labels[0] = 0  # an unlabelled slice the input does not hold
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "image.tif", np.full((2, 8, 16), 128, np.uint8))
    args = ["predict", model, tmp_path / "image.tif", tmp_path / "mask.tif", "--output", "mask", "--no-tta"]
    code, _, err = run_cli(capsys, [*args, "--labels", tmp_path / "labels.tif"])
    assert code == 2 and "--label-slices 0:2" in err and not (tmp_path / "mask.tif").exists()
    code, _, err = run_cli(capsys, [*args, "--labels", tmp_path / "labels.tif", "--label-slices", "1:4"])
    assert code == 2 and "--label-slices 1:4 picks 3 slice(s)" in err
    code, out, err = run_cli(
        capsys, [*args, "--labels", tmp_path / "labels.tif", "--label-slices", "2:4", "--target", "objects"]
    )
    assert code == 0, err
    assert "target: objects (separate objects" in err and "as set" in err
    assert "IoU 0.5000" in out and "object precision 0.0000" in out and "truth objects 4  predicted objects 2" in out


def test_labels_of_a_partly_labelled_model_score_its_labelled_pixels(tmp_path, capsys):
    """A model trained on napari's layer (data.foreground 1, background 2, 0 unpainted) reads --labels
    so: only painted pixels are scored, as `dcn-ray score --foreground 1 --background 2` scores them."""
    model = constant_model_file(tmp_path, foreground=1, background=2)
    layer = np.zeros((3, 8, 16), np.uint8)
    layer[0, :, :8] = 1  # slice 0: foreground on the left, background on the right
    layer[0, :, 8:] = 2
    layer[2, :4] = 2  # slice 2: background scribbled on the top; slice 1 unpainted
    tifffile.imwrite(tmp_path / "layer.tif", layer)
    tifffile.imwrite(tmp_path / "image.tif", np.full((3, 8, 16), 128, np.uint8))
    out = tmp_path / "mask.tif"
    args = ["predict", model, tmp_path / "image.tif", out, "--output", "mask", "--no-tta", "--target", "objects"]
    code, predicted, err = run_cli(capsys, [*args, "--labels", tmp_path / "layer.tif"])
    assert code == 0, err
    lines = predicted.strip().splitlines()
    assert "IoU 0.3333" in lines[0]  # all foreground: 64 of the 128 + 64 labelled pixels are foreground
    assert lines[-1] == "labelled: 192 of 384 pixels (50.0 %), on 2 of 3 slices; unlabelled pixels count in no score"
    scored = ["score", out, tmp_path / "layer.tif", "--foreground", "1", "--background", "2", "--target", "objects"]
    code, again, err = run_cli(capsys, scored)
    assert code == 0 and again == predicted, err


def test_labels_scores_are_those_of_dcn_ray_score_on_the_output(model_file, synthetic_stack, tmp_path, capsys):
    images, labels = synthetic_stack
    out = tmp_path / "probabilities.tif"
    code, predicted, err = run_cli(capsys, ["predict", model_file, images, out, "--no-tta", "--labels", labels])
    assert code == 0, err
    code, scored, err = run_cli(capsys, ["score", out, labels])
    assert code == 0, err
    assert predicted == scored and "V_rand" in scored and "all-foreground IoU" in scored


def test_slices_segments_those_slices_alone_and_labels_are_cut_alike(model_file, synthetic_stack, tmp_path, capsys):
    images, labels = synthetic_stack
    common = ["--no-tta", "--device", "cpu"]
    code, _, err = run_cli(capsys, ["predict", model_file, images, tmp_path / "all.tif", *common])
    assert code == 0, err
    out = tmp_path / "part.tif"
    code, predicted, err = run_cli(
        capsys, ["predict", model_file, images, out, *common, "--slices", "9:12", "--labels", labels]
    )
    assert code == 0, err
    assert "wrote" in err and "3 slice(s)" in err
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "all.tif")[9:12])
    assert read_metadata(out)["slices"] == [9, 10, 11]
    code, scored, err = run_cli(capsys, ["score", out, labels, "--slices", "9:12"])
    assert code == 0 and scored == predicted and "on the same 3 slices" in scored, err
    # bad --slices: one line, nothing written
    for args, words in (
        (["--slices", "10:14"], "--slices"),
        (["--slices", "x"], "--slices"),
    ):
        code, stdout, err = run_cli(capsys, ["predict", model_file, images, tmp_path / "bad.tif", *common, *args])
        assert code == 2 and not stdout and err.startswith("dcn-ray: error: ") and err.count("\n") == 1, err
        assert words in err
    code, _, err = run_cli(capsys, ["predict", model_file, images, tmp_path / "bad.ome.zarr", "--slices", "1,3"])
    assert code == 2 and "one range of slices" in err and err.count("\n") == 1, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad")]
    # an OME-Zarr output of the same range: the same values, scores and record
    import zarr

    store = tmp_path / "part.ome.zarr"
    code, blocked, err = run_cli(
        capsys, ["predict", model_file, images, store, *common, "--slices", "9:12", "--labels", labels]
    )
    assert code == 0 and blocked == predicted, err
    np.testing.assert_array_equal(zarr.open_array(store=str(store), path="0", mode="r")[...], tifffile.imread(out))
    assert zarr.open_group(str(store), mode="r").attrs["dcn_ray"]["slices"] == [9, 12]


def test_labels_of_another_shape_are_refused(model_file, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    code, _, err = run_cli(
        capsys,
        ["predict", model_file, tmp_path / "image.tif", tmp_path / "out.tif", "--labels", tmp_path / "labels.tif"],
    )
    assert code == 2 and "labels" in err and "(3, 16, 16)" in err
    assert not (tmp_path / "out.tif").exists()


def test_bad_inputs_exit_2_and_leave_no_output(model_file, tmp_path, capsys):
    good = tmp_path / "in.tif"
    tifffile.imwrite(good, np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    (tmp_path / "notes.txt").write_text("not a tiff")
    corrupt = tmp_path / "corrupt" / checkpoint.MODEL_FILE
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00garbage")
    out = tmp_path / "out" / "out.tif"
    out.parent.mkdir()
    cases = [
        ([model_file, tmp_path / "missing.tif", out], "missing.tif"),
        ([model_file, tmp_path / "notes.txt", out], "not a TIFF"),
        ([corrupt.parent, good, out], "not a readable dcn-ray checkpoint"),
        (["sweep:nosuch", good, out, "--storage", tmp_path / "runs"], "no sweep 'nosuch'"),
        ([tmp_path / "nomodel.pt", good, out], "nomodel.pt"),
        ([model_file, good, tmp_path / "nofolder" / "out.tif"], "does not exist"),
        ([model_file, good, out, "--tile", "100"], "--tile 100"),
        ([model_file, good, out, "--tile", "128", "--overlap", "64"], "twice --overlap"),
        ([model_file, good, out, "--overlap", "20"], "--overlap 20"),
        ([model_file, good, out, "--threshold", "0"], "--threshold 0"),
        ([model_file, good, out, "--threshold", "1.5"], "--threshold 1.5"),
        ([model_file, good, good], "is the input"),
    ]
    for args, named in cases:
        code, _, err = run_cli(capsys, ["predict", *args])
        lines = [line for line in err.splitlines() if line.startswith("dcn-ray:")]
        assert code == 2 and len(lines) == 1 and named in lines[0], (args, err)
        assert list(out.parent.iterdir()) == [], args
    assert tifffile.imread(good).shape == (2, 16, 16)


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def two_gpu_ray():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.integration
def test_two_workers_share_the_slices_and_agree_with_one(model_file, synthetic_stack, tmp_path, two_gpu_ray):
    images = synthetic_stack[0]
    loaded = load_source(str(model_file))
    options = PredictOptions(tta=False, output="float", device="cpu")
    alone = predict_stack(loaded, images, tmp_path / "one.tif", options)
    assert set(alone.workers) == {"local"} and alone.slices == 12
    pooled = predict_stack(loaded, images, tmp_path / "two.tif", PredictOptions(tta=False, output="float"), workers=2)
    assert ray.is_initialized()  # predict leaves a Ray it did not start running
    assert pooled.slices == 12 and len(set(pooled.workers)) == 2
    assert all(" gpu " in name for name in pooled.workers)  # one logical GPU per actor
    assert sorted(pooled.workers.count(name) for name in set(pooled.workers)) == [6, 6]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "two.tif"), tifffile.imread(tmp_path / "one.tif"), atol=1e-5)
    with pytest.raises(InputError, match="only 2 GPU"):
        predict_stack(loaded, images, tmp_path / "three.tif", PredictOptions(tta=False), workers=3)
    assert not (tmp_path / "three.tif").exists()


@pytest.mark.integration
def test_actors_get_a_bounded_number_of_slices_and_results_come_in_order(model_file, two_gpu_ray):
    loaded = load_source(str(model_file))
    options = PredictOptions(tta=False)
    worker = ray.remote(num_cpus=1, num_gpus=1)(PredictorWorker)
    actors = [worker.remote(loaded.payload, partial(SlicePredictor, options=options)) for _ in range(2)]
    rng = np.random.default_rng(4)
    images = [rng.random((24, 40), dtype=np.float32) for _ in range(9)]
    pulled: list[int] = []

    def stream():
        for index, image in enumerate(images):
            pulled.append(index)
            yield image

    results = []
    for result in ordered_map(actors, stream(), per_worker=2):
        results.append(result)
        assert len(pulled) <= len(results) + 4  # 2 per actor in flight, not the whole stack
    assert len(pulled) == 9
    local = SlicePredictor(loaded.model, options)
    for image, (probability, _) in zip(images, results, strict=True):
        np.testing.assert_allclose(probability, local(image), atol=1e-5)


def test_ray_actors_rebuild_the_family_the_checkpoint_names():
    """The payload sent to the actors keeps ``model_family``: a U-Net is not rebuilt as a DCN."""
    from dcn_ray.models.unet import UNet
    from dcn_ray.predict.ray_pool import actor_payload

    unet = UNet(depth=2, width=4)
    payload = {"model_family": "unet", "model_kwargs": unet.kwargs, "weights": unet.state_dict(), "step": 3}
    sent = actor_payload(payload)
    assert set(sent) == {"model_family", "model_kwargs", "weights"}
    assert isinstance(checkpoint.model_from_payload(sent), UNet)
    old = {"model_kwargs": {"kernels": (4, 8, 16), "width": 4}, "weights": {}}  # before families: a DCN
    assert set(actor_payload(old)) == {"model_kwargs", "weights"}
