"""Tests of the crop sampler and the dihedral transforms."""

from __future__ import annotations

import pytest
import torch

from dcn_ray.core.sampler import (
    DIHEDRAL,
    INVERSE,
    TRANSFORM_SETS,
    CropSampler,
    apply_transform,
    invert_transform,
)

DEPTH, HEIGHT, WIDTH = 3, 40, 64


def _indexed_stack() -> torch.Tensor:
    """A stack whose every pixel holds its own flat index (exact in float32)."""
    return torch.arange(DEPTH * HEIGHT * WIDTH, dtype=torch.float32).reshape(DEPTH, HEIGHT, WIDTH)


def _sampler(images: torch.Tensor, masks: torch.Tensor, seed: int = 0, **kwargs) -> CropSampler:
    options = {"crop": 16, "batch_size": 64, "generator": torch.Generator().manual_seed(seed)}
    return CropSampler(images, masks, **(options | kwargs))


def _identify(images: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    """(slice, transform) of a crop of ``_indexed_stack``, asserting it is a transformed window."""
    index = crop.long()
    z = index // (HEIGHT * WIDTH)
    assert (z == z[0, 0]).all(), "a crop mixes slices"
    rows, cols = (index % (HEIGHT * WIDTH)) // WIDTH, index % WIDTH
    top, left, size = int(rows.min()), int(cols.min()), crop.shape[-1]
    window = images[int(z[0, 0]), top : top + size, left : left + size]
    matches = [t for t in range(8) if torch.equal(apply_transform(window, t), crop)]
    assert len(matches) == 1, "not a dihedral transform of a window"
    return int(z[0, 0]), matches[0]


def test_shapes_and_dtypes() -> None:
    images = torch.rand(DEPTH, HEIGHT, WIDTH)
    masks = torch.randint(0, 2, (DEPTH, HEIGHT, WIDTH), dtype=torch.uint8) * 255
    x, y = _sampler(images, masks, crop=32, batch_size=5).sample()
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (5, 32, 32) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 1}  # 255 counts as foreground


@pytest.mark.parametrize("transforms", ["paper6", "dihedral8"])
def test_image_and_mask_get_the_same_transform(transforms: str) -> None:
    images = torch.rand(DEPTH, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    x, y = _sampler(images, images > 0.5, transforms=transforms).sample()
    assert torch.equal(y, (x[:, 0] > 0.5).long())
    assert 0 < y.float().mean() < 1


@pytest.mark.parametrize(("transforms", "count"), [("paper6", 6), ("dihedral8", 8)])
def test_crops_are_transformed_windows_of_the_given_slices(transforms: str, count: int) -> None:
    images = _indexed_stack()
    sampler = _sampler(images, torch.zeros_like(images, dtype=torch.bool), transforms=transforms)
    seen_t, seen_z = set(), set()
    for _ in range(3):
        x, _ = sampler.sample()
        for crop in x[:, 0]:
            z, t = _identify(images, crop)
            seen_z.add(z)
            seen_t.add(t)
    assert seen_t == set(range(count))  # every transform occurs, and only those of the set
    assert seen_z == set(range(DEPTH))


def test_crops_reach_every_border() -> None:
    images = _indexed_stack()
    x, _ = _sampler(images, images > 0, crop=40, batch_size=512).sample()
    cols = x.long() % WIDTH
    rows = (x.long() % (HEIGHT * WIDTH)) // WIDTH
    assert cols.min() == 0 and cols.max() == WIDTH - 1
    assert rows.min() == 0 and rows.max() == HEIGHT - 1  # crop == HEIGHT: the only position


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    images = torch.rand(DEPTH, HEIGHT, WIDTH)
    masks = images > 0.3
    first, second, other = (_sampler(images, masks, seed=s) for s in (7, 7, 8))
    for _ in range(2):
        (xa, ya), (xb, yb), (xc, _) = first.sample(), second.sample(), other.sample()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)


def test_global_generator_when_none_given() -> None:
    images = torch.rand(DEPTH, HEIGHT, WIDTH)
    sampler = CropSampler(images, images > 0.5, crop=8, batch_size=3)
    torch.manual_seed(3)
    a = sampler.sample()[0]
    torch.manual_seed(3)
    assert torch.equal(a, sampler.sample()[0])


@pytest.mark.parametrize("t", range(8))
def test_apply_invert_round_trip(t: int) -> None:
    x = torch.randn(2, 3, 5, 7)
    transformed = apply_transform(x, t)
    assert torch.equal(invert_transform(transformed, t), x)
    assert torch.equal(apply_transform(transformed, INVERSE[t]), x)


def test_transform_numbering() -> None:
    x = torch.arange(6.0).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    expected = [
        [[0, 1, 2], [3, 4, 5]],
        [[2, 5], [1, 4], [0, 3]],  # rot90 counter-clockwise
        [[5, 4, 3], [2, 1, 0]],
        [[3, 0], [4, 1], [5, 2]],
        [[2, 1, 0], [5, 4, 3]],  # left-right flip
        [[3, 4, 5], [0, 1, 2]],  # up-down flip
        [[0, 3], [1, 4], [2, 5]],  # transpose
        [[5, 2], [4, 1], [3, 0]],  # anti-transpose
    ]
    for t, values in enumerate(expected):
        assert apply_transform(x, t).tolist() == values, DIHEDRAL[t]
    assert len(DIHEDRAL) == 8 and TRANSFORM_SETS == {"paper6": 6, "dihedral8": 8}
    with pytest.raises(ValueError, match="range"):
        apply_transform(x, 8)
    with pytest.raises(ValueError, match="range"):
        invert_transform(x, -1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop": 48}, "larger"),
        ({"crop": 12}, "multiple of 8"),
        ({"crop": 0}, "multiple of 8"),
        ({"batch_size": 0}, "batch_size"),
        ({"transforms": "paper5"}, "unknown transforms 'paper5'"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    images = torch.rand(DEPTH, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match=message):
        _sampler(images, images > 0.5, **kwargs)


def test_bad_stacks_are_refused() -> None:
    images = torch.rand(DEPTH, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="must match"):
        _sampler(images, torch.zeros(DEPTH, HEIGHT, WIDTH - 1))
    with pytest.raises(ValueError, match="float"):
        _sampler((images * 255).to(torch.uint8), images > 0.5)
    with pytest.raises(ValueError, match=r"\(Z, \[C,\] H, W\)"):
        _sampler(images[0], images[0] > 0.5)
