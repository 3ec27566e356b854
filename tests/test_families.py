"""Model families: the registry, the U-Net beside the DCN, checkpoints naming their family, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plugin_family
import pytest
import tifffile
import torch
from conftest import run_cli, small_job, train_job

from dcn_ray import models
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.loss import dcn_loss, loss_parts
from dcn_ray.core.train import build_model
from dcn_ray.errors import InputError
from dcn_ray.io.tiff import read_metadata
from dcn_ray.job.config import job_from_dict
from dcn_ray.models.dcn import DCN
from dcn_ray.models.outputs import pad_forward
from dcn_ray.models.unet import UNet
from dcn_ray.predict.engine import PredictOptions, SlicePredictor

pytestmark = pytest.mark.usefixtures("two_threads")


def unet_job(synthetic_stack, **train_settings):
    settings = {"steps": 12, "eval_every": 6, "threads": 2, **train_settings}
    raw = small_job(*synthetic_stack, model={"family": "unet", "depth": 2, "width": 4}, train=settings)
    return job_from_dict(raw)


@pytest.fixture(scope="module")
def unet_file(synthetic_stack, tmp_path_factory) -> Path:
    job = unet_job(synthetic_stack)
    result = train_job(job, None, load_data(job.data))
    path = tmp_path_factory.mktemp("unet") / checkpoint.MODEL_FILE
    checkpoint.save(result.model, path)
    return path


# ----------------------------------------------------------------------------- the registry


def test_registry_builds_each_family_by_name_and_refuses_others():
    assert set(models.FAMILIES) == {"dcn", "unet"}
    dcn = models.build("dcn", kernels=(4, 8, 16), width=4)
    unet = models.build("unet", depth=3, width=4)
    assert isinstance(dcn, DCN) and isinstance(unet, UNet)
    assert models.family_of(dcn).branches and not models.family_of(unet).branches
    assert (models.size_multiple(dcn), models.size_multiple(unet)) == (8, 8)
    assert models.receptive_radius(dcn) == 54 and models.receptive_radius(unet) == 58
    assert models.describe(dcn) == "kernels 4-8-16" and models.describe(unet) == "U-Net depth 3, width 4"
    with pytest.raises(ValueError, match="unknown model family 'vit'; choose one of dcn, unet"):
        models.build("vit")
    with pytest.raises(ValueError, match="depth must be an integer from 1 to 6"):
        UNet(depth=7)


@pytest.mark.parametrize("depth", [2, 3])
def test_unet_receptive_radius_bounds_the_reach_of_a_pixel(depth):
    model = UNet(depth=depth, width=4, batch_norm=False, seed=1).eval()
    size, reach = 192, 0
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(x).fused
        for offset in range(0, 2**depth, 3):
            centre = size // 2 + offset
            nudged = x.clone()
            nudged[0, 0, centre, centre] += 5.0
            rows, cols = torch.nonzero((model(nudged).fused - base).abs().amax(1)[0] > 0, as_tuple=True)
            reach = max(reach, centre - rows.min().item(), rows.max().item() - centre)
            reach = max(reach, centre - cols.min().item(), cols.max().item() - centre)
    assert models.unet_receptive_radius(depth) * 0.8 < reach <= models.unet_receptive_radius(depth)


def test_unet_seeds_pair_and_its_output_feeds_the_loss():
    first, again, other = (UNet(depth=2, width=4, seed=s) for s in (3, 3, 4))
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.classify.weight, other.classify.weight)
    out = pad_forward(first, torch.rand(2, 1, 30, 21), models.size_multiple(first))
    assert out.fused.shape == (2, 2, 30, 21) and out.branches == ()
    total, parts = dcn_loss(out, torch.zeros(2, 30, 21, dtype=torch.int64), aux=0.5)
    assert total.requires_grad and list(loss_parts(parts)) == ["fused"]
    assert total.item() == pytest.approx(parts[0].item())


def test_the_job_chooses_the_family(synthetic_stack):
    job = unet_job(synthetic_stack)
    assert job.model.family == "unet" and job.flat()["model.family"] == "unet"
    model = build_model(job.model, seed=job.train.seed)
    assert isinstance(model, UNet) and model.kwargs["depth"] == 2
    dcn = build_model(job_from_dict(small_job(*synthetic_stack)).model, (4, 8, 16), seed=7)
    direct = DCN(kernels=(4, 8, 16), width=4, seed=7)  # through the registry, the DCN is built as before
    assert isinstance(dcn, DCN) and dcn.kwargs == direct.kwargs
    assert all(torch.equal(a, b) for a, b in zip(dcn.state_dict().values(), direct.state_dict().values()))
    for model_section, message in (
        ({"family": "vit"}, "model.family must be one of dcn, unet, got 'vit'"),
        ({"family": "unet", "depth": 0}, "model.depth must be 1 to 6"),
        ({"family": "unet", "depth": 6}, "train.crop=32 must be a multiple of 64 for a U-Net depth 6, width 4"),
        ({"family": "unet", "branch_noise": [1, 0, 0]}, "model.branch_noise applies to the DCN only"),
    ):
        with pytest.raises(InputError, match=message):
            job_from_dict(small_job(*synthetic_stack, model=model_section))
    deep = {"family": "unet", "depth": 5}  # one value per channel after five poolings of a 32-pixel crop
    with pytest.raises(InputError, match=r"batch norm needs more than one value per channel .*crop / 32 squared"):
        job_from_dict(small_job(*synthetic_stack, model=deep, train={"batch_size": 1}))
    assert job_from_dict(small_job(*synthetic_stack, model={**deep, "batch_norm": False}, train={"batch_size": 1}))


# ----------------------------------------------------------------------------- training, checkpoints


def test_unet_trains_and_its_checkpoint_names_its_family(synthetic_stack, unet_file):
    job = unet_job(synthetic_stack, steps=40, eval_every=20, lr=0.01)
    result = train_job(job, None, load_data(job.data))
    assert result.best_iou > 0.5 and all(np.isfinite(h["train_loss"]) for h in result.history)
    assert result.model["model_family"] == "unet" and "kernels" not in result.model
    model, payload = checkpoint.load_model(unet_file)
    assert isinstance(model, UNet) and payload["model_family"] == "unet"
    assert model.kwargs == {"depth": 2, "width": 4, "batch_norm": True, "in_channels": 1, "num_classes": 2}
    again = checkpoint.model_from_payload(payload)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).fused, again(x).fused)


def test_old_checkpoints_without_a_family_load_as_dcn(tmp_path):
    model = DCN(kernels=(4, 8, 16), width=4)
    payload = checkpoint.model_payload(model, config={}, step=1, metrics={})
    assert payload["model_family"] == "dcn" and payload["kernels"] == [4, 8, 16]
    del payload["model_family"]  # as every checkpoint before model families
    checkpoint.save(payload, tmp_path / "old.pt")
    loaded, _ = checkpoint.load_model(tmp_path / "old.pt")
    assert isinstance(loaded, DCN) and loaded.kernels == (4, 8, 16)
    checkpoint.save({**payload, "model_family": "vit"}, tmp_path / "odd.pt")
    with pytest.raises(InputError, match="unknown model family 'vit'"):
        checkpoint.load_model(tmp_path / "odd.pt")


# ----------------------------------------------------------------------------- predict, inspect


def test_unet_tiles_blend_to_the_whole_slice(unet_file):
    model, _ = checkpoint.load_model(unet_file)
    image = np.random.default_rng(0).random((203, 141), dtype=np.float32)
    radius = models.receptive_radius(model)
    tiled = SlicePredictor(model, PredictOptions(tile=144, overlap=56, tta=False, device="cpu"))
    assert tiled.margin == radius == 26
    with torch.no_grad():
        logits = pad_forward(model, torch.from_numpy(image)[None, None], 4).fused
    np.testing.assert_allclose(tiled(image), torch.softmax(logits, 1)[0, 1].numpy(), atol=1e-4)
    deep = UNet(depth=4, width=4)
    with pytest.raises(InputError, match="--tile 200: must be a multiple of 16 for U-Net depth 4"):
        SlicePredictor(deep, PredictOptions(tile=200, overlap=64, device="cpu"))


def test_predict_and_inspect_on_a_unet_checkpoint(synthetic_stack, unet_file, tmp_path, capsys):
    images, labels = synthetic_stack
    stack = tifffile.imread(images)[:2]
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "truth.tif", tifffile.imread(labels)[:2], photometric="minisblack")
    args = ["predict", unet_file, tmp_path / "in.tif", tmp_path / "out.tif", "--no-tta"]
    code, _, err = run_cli(capsys, [*args, "--labels", tmp_path / "truth.tif"])
    assert code == 0, err
    assert "U-Net depth 2, width 4" in err
    assert tifffile.imread(tmp_path / "out.tif").shape == stack.shape
    meta = read_metadata(tmp_path / "out.tif")
    assert meta["model_family"] == "unet" and meta["kernels"] is None
    code, _, err = run_cli(capsys, ["score", tmp_path / "out.tif", tmp_path / "truth.tif"])
    assert code == 0, err
    code, _, err = run_cli(capsys, ["inspect", unet_file, images, tmp_path / "look"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "inspect looks at the DCN's branches F1-F3" in err and "U-Net (unet)" in err
    assert not (tmp_path / "look").exists()


def test_a_unet_of_depth_4_writes_block_wise_volumes_equal_to_whole_slices(tmp_path):
    """Its size multiple is 16: blocks, chunks and halo lie on the 16-pixel grid (8 would misalign its poolings)."""
    import zarr

    from dcn_ray.predict.volume import predict_volume
    from dcn_ray.track.sources import load_source

    model = UNet(depth=4, width=4, seed=3)
    path = tmp_path / checkpoint.MODEL_FILE
    checkpoint.save(checkpoint.model_payload(model, config={}, step=0, metrics={}), path)
    loaded = load_source(str(path))
    volume = np.random.default_rng(0).integers(0, 256, (1, 301, 285), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", volume, photometric="minisblack")
    options = PredictOptions(tta=True, output="float", device="cpu")
    with pytest.raises(InputError, match="the Y side 40 must be a multiple of 16"):
        predict_volume(loaded, tmp_path / "in.tif", tmp_path / "bad.ome.zarr", options, chunks=(1, 40, 48))
    result = predict_volume(
        loaded, tmp_path / "in.tif", tmp_path / "out.ome.zarr", options, chunks=(1, 48, 48), block=48
    )
    assert result.blocks == 7 * 6  # halo 128 (radius 122 on the 16 grid): every region is a part of the slice
    expected = SlicePredictor(loaded.model, options)(volume[0].astype(np.float32) / 255)
    written = zarr.open_array(store=str(tmp_path / "out.ome.zarr"), path="0", mode="r")[0]
    np.testing.assert_allclose(written, expected, atol=2e-6)


# ----------------------------------------------------------------------------- every family's contract

#: Every registered family: the built-in ones and the one the test package registers (tests/plugins).
EVERY_FAMILY = [*models.BUILT_IN, plugin_family.NAME]
#: Small settings of a family's ``model`` keys for the contract below (its defaults otherwise).
SMALL = {"dcn": {"width": 4}, "unet": {"depth": 2, "width": 4}, plugin_family.NAME: {"width": 4}}


@pytest.fixture(params=EVERY_FAMILY)
def family(request, tmp_path):
    """One registered family by name; the test package's is installed for the test (and only then)."""
    if request.param == plugin_family.NAME:
        with plugin_family.toy_family(tmp_path / "site"):
            yield models.get(request.param)
    else:
        yield models.get(request.param)


def _small(family: models.Family, seed: int = 0):
    kernels = {"kernels": (4, 8, 16)} if family.uses_kernels else {}
    return models.build(family.name, **{**family.job_kwargs(SMALL.get(family.name, {})), **kernels}, seed=seed)


def test_every_family_is_declared_whole(family):
    assert family.params() is not None and set(family.keys) >= set(SMALL.get(family.name, {}))
    assert family.paper[0] and family.paper[1].startswith("https://")
    module, name = family.source  # export inlines its network's module
    model = _small(family)
    assert type(model).__name__ == name and type(model).__module__ == module and model.family == family.name
    assert models.family_of(model) is family and models.family_name({"model_family": family.name}) == family.name


def test_every_family_builds_from_its_job_keys_and_refuses_anothers(family, synthetic_stack):
    job = job_from_dict(small_job(*synthetic_stack, model={"family": family.name, **SMALL.get(family.name, {})}))
    model = build_model(job.model, (4, 8, 16) if family.uses_kernels else None, seed=3)
    assert models.family_of(model) is family and job.flat()["model.family"] == family.name
    for other in models.FAMILIES.values():  # a key no other family reads, at a value that is not its default
        foreign = [k for k in other.keys if k not in family.keys]
        if other is family or not foreign:
            continue
        key = foreign[0]
        value = {"depth": 3, "branch_noise": [1, 0, 0], "redraw": ["F1"], "toy_kernel": 5}.get(key)
        if value is None:
            continue
        raw = small_job(*synthetic_stack, model={"family": family.name, key: value})
        with pytest.raises(InputError, match=f"model.{key} applies to the {other.title} only, not to {family.name}"):
            job_from_dict(raw)


def test_every_family_pairs_seeds_outputs_logits_and_bounds_its_reach(family):
    first, again = _small(family, seed=5).eval(), _small(family, seed=5).eval()
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    multiple, radius = models.size_multiple(first), models.receptive_radius(first)
    size = multiple * -(-(2 * radius + 24) // multiple)
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = first(x)
        assert out.fused.shape == (1, 2, size, size) and (len(out.branches) > 0) == family.branches
        centre = size // 2
        nudged = x.clone()
        nudged[0, 0, centre, centre] += 5.0
        rows, cols = torch.nonzero((first(nudged).fused - out.fused).abs().amax(1)[0] > 0, as_tuple=True)
    reach = max(centre - rows.min().item(), rows.max().item() - centre, centre - cols.min().item())
    assert 0 < reach <= radius


def test_every_family_trains_checkpoints_and_predicts(family, synthetic_stack, tmp_path):
    raw = small_job(*synthetic_stack, model={"family": family.name, **SMALL.get(family.name, {})})
    job = job_from_dict({**raw, "train": {**raw["train"], "steps": 4, "eval_every": 2}})
    result = train_job(job, (4, 8, 16) if family.uses_kernels else None, load_data(job.data))
    assert result.model["model_family"] == family.name and ("kernels" in result.model) == family.uses_kernels
    checkpoint.save(result.model, tmp_path / checkpoint.MODEL_FILE)
    model, payload = checkpoint.load_model(tmp_path / checkpoint.MODEL_FILE)
    assert models.family_of(model) is family and payload["config"]["model"]["family"] == family.name
    image = np.random.default_rng(0).random((45, 38), dtype=np.float32)
    predicted = SlicePredictor(model, PredictOptions(tta=False, device="cpu"))(image)
    assert predicted.shape == image.shape and np.isfinite(predicted).all()


def test_a_family_from_another_package_is_found_by_its_entry_point(tmp_path):
    assert plugin_family.NAME not in models.FAMILIES  # not installed: not known
    with plugin_family.toy_family(tmp_path / "site"):
        assert list(models.FAMILIES)[-1] == plugin_family.NAME and models.get("toy").title == "Toy net"
        raw = {"data": {"images": "i.tif", "labels": "l.tif"}, "model": {"family": "toy", "toy_kernel": 4}}
        with pytest.raises(InputError, match="model.toy_kernel must be 1, 3 or 5, got 4"):
            job_from_dict(raw)
    assert plugin_family.NAME not in models.FAMILIES
