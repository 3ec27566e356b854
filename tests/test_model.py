"""Tests of the DCN: exact output sizes for every kernel triple, validation, rebuild, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcn_ray.kernels import TABLE1
from dcn_ray.models.dcn import DCN, MULTIPLE, DCNOutput
from dcn_ray.models.outputs import pad_forward

ODD = [(3, 5, 9), (5, 7, 11), (2, 4, 13)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("kernels", [*TABLE1, *ODD])
def test_output_sizes_are_exact(kernels: tuple[int, int, int]) -> None:
    model = DCN(kernels=kernels, width=4)
    for height, width in ((32, 32), (48, 64)):
        out = model(torch.randn(2, 1, height, width))
        assert isinstance(out, DCNOutput)
        assert out.fused.shape == (2, 2, height, width)
        assert [tuple(b.shape) for b in out.branches] == [(2, 2, height, width)] * 3


@pytest.mark.parametrize("kernels", [(4, 8, 16), (4, 8, 10), (3, 5, 9), (2, 4, 13)])
def test_deconvolution_is_padding_zero_cropped_centrally(kernels: tuple[int, int, int]) -> None:
    model = DCN(kernels=kernels, width=4, batch_norm=False)
    for branch, k, s in zip(model.branches, kernels, (2, 4, 8)):
        features = torch.randn(1, branch.deconv.in_channels, 5, 6)
        full = F.conv_transpose2d(features, branch.deconv.weight, branch.deconv.bias, stride=s)
        assert full.shape[-2:] == (5 * s + k - s, 6 * s + k - s)
        c = (k - s) // 2
        expected = full[..., c : c + 5 * s, c : c + 6 * s]
        torch.testing.assert_close(branch.upsample(features), expected)


@pytest.mark.parametrize(("kernels", "branch"), [((1, 8, 16), "F1"), ((4, 3, 16), "F2"), ((4, 8, 6), "F3")])
def test_kernel_smaller_than_stride_is_refused(kernels: tuple[int, int, int], branch: str) -> None:
    with pytest.raises(ValueError, match=f"invalid for branch {branch}"):
        DCN(kernels=kernels, width=4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"width": 0}, "width"),
        ({"width": 2.5}, "width"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 1}, "num_classes"),
        ({"kernels": (4, 8)}, "kernels"),
        ({"kernels": (4, 8.0, 16)}, "k2"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DCN(**kwargs)


def test_sides_not_multiple_of_8_are_refused_in_forward() -> None:
    model = DCN(width=4)
    with pytest.raises(ValueError, match="multiples of 8.*30x32"):
        model(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_kwargs_rebuild_the_same_architecture(batch_norm: bool) -> None:
    model = DCN(kernels=(2, 6, 18), width=6, batch_norm=batch_norm, in_channels=2, num_classes=3)
    assert model.kwargs == {
        "kernels": [2, 6, 18],
        "width": 6,
        "batch_norm": batch_norm,
        "in_channels": 2,
        "num_classes": 3,
    }
    clone = DCN(**model.kwargs)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert shapes == {name: tuple(p.shape) for name, p in clone.state_dict().items()}
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    x = torch.randn(1, 2, 16, 24)
    torch.testing.assert_close(clone(x).fused, model(x).fused)
    assert clone(x).fused.shape == (1, 3, 16, 24)


def test_branches_differ_and_have_expected_kernels() -> None:
    model = DCN(kernels=(6, 10, 12), width=8)
    assert [b.deconv.kernel_size for b in model.branches] == [(6, 6), (10, 10), (12, 12)]
    assert [b.deconv.stride for b in model.branches] == [(2, 2), (4, 4), (8, 8)]
    assert [b.deconv.in_channels for b in model.branches] == [16, 32, 64]
    plain = DCN(width=4, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_fused_is_sum_of_branches_and_gradients_reach_every_branch() -> None:
    model = DCN(kernels=(3, 5, 9), width=4)
    out = model(torch.randn(2, 1, 32, 40))
    torch.testing.assert_close(out.fused, sum(out.branches))
    out.fused.square().mean().backward()
    for branch in model.branches:
        assert branch.deconv.weight.grad is not None
        assert branch.deconv.weight.grad.abs().sum() > 0
        assert branch.classify.weight.grad.abs().sum() > 0
    assert model.block1[0].weight.grad.abs().sum() > 0


def test_pad_forward_crops_back_to_any_size() -> None:
    model = DCN(width=4).eval()
    x = torch.randn(2, 1, 30, 45)
    out = pad_forward(model, x, MULTIPLE)
    assert isinstance(out, DCNOutput)
    assert out.fused.shape == (2, 2, 30, 45)
    assert [tuple(b.shape) for b in out.branches] == [(2, 2, 30, 45)] * 3
    torch.testing.assert_close(out.fused, sum(out.branches))
    # The visible part equals the model run on the explicitly reflection-padded input.
    padded = F.pad(x, (0, 3, 0, 2), mode="reflect")
    torch.testing.assert_close(out.fused, model(padded).fused[..., :30, :45])
    # Multiples of 8 pass through unchanged; tiny images fall back to edge replication.
    y = torch.randn(1, 1, 16, 24)
    torch.testing.assert_close(pad_forward(model, y, MULTIPLE).fused, model(y).fused)
    assert pad_forward(model, torch.randn(1, 1, 3, 5), MULTIPLE).fused.shape == (1, 2, 3, 5)


def test_channels_last_matches_contiguous() -> None:
    model = DCN(kernels=(3, 8, 13), width=4).eval()
    x = torch.randn(2, 1, 32, 24)
    expected = model(x).fused
    model_cl = model.to(memory_format=torch.channels_last)
    got = model_cl(x.to(memory_format=torch.channels_last)).fused
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_one_seed_gives_two_kernel_configurations_identical_trunks_and_unchanged_branches():
    """Seeds pair: every layer whose shape two configurations share starts bit for bit alike."""
    import torch

    from dcn_ray.core.train import build_model
    from dcn_ray.job.config import job_from_dict

    data = {"images": "a.tif", "labels": "b.tif"}
    job = job_from_dict({"data": data, "model": {"width": 4}, "train": {"seed": 3}})
    torch.manual_seed(0)
    a = build_model(job.model, (4, 8, 16), seed=job.train.seed).state_dict()
    torch.manual_seed(99)  # the global stream plays no part
    b = build_model(job.model, (2, 8, 16), seed=job.train.seed).state_dict()
    differs = {key for key in a if a[key].shape != b[key].shape or not torch.equal(a[key], b[key])}
    assert differs == {"branches.0.deconv.weight"}  # only F1's deconvolution has another shape
    trunk = [key for key in a if key.startswith("block")]
    assert len(trunk) > 20 and all(torch.equal(a[key], b[key]) for key in trunk)
    other = build_model(job.model, (4, 8, 16), seed=4).state_dict()
    assert not torch.equal(a["block1.0.weight"], other["block1.0.weight"])  # another seed, another start
    again = DCN(kernels=(4, 8, 16), width=4, seed=3).state_dict()
    assert all(torch.equal(a[key], again[key]) for key in a)  # reproducible


def test_branch_noise_plants_a_weakness_in_one_branch_only():
    import torch

    model = DCN(width=4, branch_noise=(0.0, 0.0, 2.0), seed=1).eval()
    assert model.kwargs["branch_noise"] == [0.0, 0.0, 2.0] and "branch_noise" not in DCN(width=4).kwargs
    images = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first.branches[0], second.branches[0]) and torch.equal(first.branches[1], second.branches[1])
    assert not torch.equal(first.branches[2], second.branches[2])  # F3 sees its features through noise
    with pytest.raises(ValueError, match="branch_noise"):
        DCN(width=4, branch_noise=(0.0, -1.0, 0.0))


def test_a_sham_redraws_exactly_what_the_guided_change_redraws_and_rebuilds_from_its_checkpoint():
    """The sham (the reference's kernels, F3's start re-drawn) shares every weight with the reference
    of its seed except F3's deconvolution: the layers the guided 4-8-12 re-draws, no more, no less."""
    from dcn_ray.core import checkpoint
    from dcn_ray.core.train import build_model
    from dcn_ray.job.config import job_from_dict
    from dcn_ray.job.sweep_grid import trial_job

    data = {"images": "a.tif", "labels": "b.tif"}
    job = job_from_dict({"data": data, "model": {"width": 4}})
    sham_job = trial_job(job, "dcn", (("model.redraw", ("F3",)),), seed=5)  # as the planner's sham trial trains
    reference = build_model(job.model, (4, 8, 16), seed=5).state_dict()
    sham_model = build_model(sham_job.model, (4, 8, 16), seed=5)
    sham = sham_model.state_dict()
    guided = build_model(job.model, (4, 8, 12), seed=5).state_dict()
    redrawn = {k for k in reference if not torch.equal(reference[k], sham[k])}
    changed = {
        k for k in reference if reference[k].shape != guided[k].shape or not torch.equal(reference[k], guided[k])
    }
    assert redrawn == changed == {"branches.2.deconv.weight"}
    assert reference["branches.2.deconv.weight"].std() == pytest.approx(sham["branches.2.deconv.weight"].std(), rel=0.2)
    again = DCN(width=4, redraw=["F3"], seed=5).state_dict()
    assert torch.equal(sham["branches.2.deconv.weight"], again["branches.2.deconv.weight"])  # reproducible
    # the checkpoint carries what rebuilds it: predict and export build DCN(**model_kwargs)
    payload = checkpoint.model_payload(sham_model, config=sham_job.to_dict(), step=0, metrics={})
    assert payload["model_kwargs"]["redraw"] == ["F3"] and payload["config"]["model"]["redraw"] == ["F3"]
    rebuilt = checkpoint.model_from_payload(payload)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in sham.items())
    import types

    from dcn_ray.export.architecture import EXPORTED_CLASS, architecture_source, family_of

    exported = types.ModuleType("exported_sham")  # export: the standalone architecture file rebuilds it too
    exec(compile(architecture_source(family_of(payload)[1]), "exported_sham.py", "exec"), exported.__dict__)
    getattr(exported, EXPORTED_CLASS)(**payload["model_kwargs"]).load_state_dict(payload["weights"])
    assert "redraw" not in DCN(width=4).kwargs  # ordinary checkpoints stay as they were
    with pytest.raises(ValueError, match="redraw"):
        DCN(width=4, redraw=["F4"])
