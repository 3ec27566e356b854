"""Serial-section context (2.5-D): which slices a model of context N reads to predict slice z.

A model of ``model.context`` N takes the 2N + 1 slices z - N .. z + N as input channels (in that
order; channel N is z itself) and predicts slice z. Where a neighbour lies outside the slices it
may read, it is replaced by reflection about the edge without repeating it (numpy's
``mode="reflect"``: z - 1 at the first slice reads slice 1, z + 1 at the last reads the one before
it; a run of one slice reads itself for every neighbour). The rules:

- **prediction, validation and test** (:func:`neighbours`): the whole stack may be read; reflection
  at the stack's two ends only. Validation and test slices are read exactly as ``predict`` reads
  them, so their scores are the scores a prediction would get.
- **training** (:func:`training_neighbours`): the slices of the validation and test splits that are
  not training slices themselves are never read. A training slice reflects at the edges of its
  *allowed run*, the longest run of consecutive readable slices around it: with the usual z-blocked
  splits (train | gap | val | gap | test) its neighbours may lie in a gap slice, never in a held-out
  block.

Every neighbour of z lies within z - N .. z + N (clipped to the stack), so a block of slices
``start:stop`` needs the slices of :func:`read_span` and nothing else: blocked prediction equals
whole-stack prediction. Context 0 reads z alone: the single-slice model of before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Iterator, Sequence

import numpy as np


def reflect(index: int, low: int, high: int) -> int:
    """``index`` reflected into ``low..high`` (both included) without repeating the edge."""
    if high < low:
        raise ValueError(f"empty range {low}..{high}")
    if high == low:
        return low
    period = 2 * (high - low)
    offset = (index - low) % period
    return low + (offset if offset <= high - low else period - offset)


def neighbours(z: int, context: int, n_slices: int) -> list[int]:
    """The 2 * context + 1 slices read for slice ``z`` of a stack of ``n_slices`` (prediction's rule)."""
    _check(z, context, n_slices)
    return [reflect(z + d, 0, n_slices - 1) for d in range(-context, context + 1)]


def training_neighbours(z: int, context: int, n_slices: int, forbidden: Collection[int]) -> list[int]:
    """The slices read for training slice ``z``: reflected within its run of slices not ``forbidden``."""
    _check(z, context, n_slices)
    if z in forbidden:
        raise ValueError(f"training slice {z} is itself forbidden")
    low = z
    while low - 1 >= 0 and low - 1 not in forbidden:
        low -= 1
    high = z
    while high + 1 < n_slices and high + 1 not in forbidden:
        high += 1
    return [reflect(z + d, low, high) for d in range(-context, context + 1)]


def forbidden_for_training(train: Sequence[int], val: Sequence[int], test: Sequence[int]) -> frozenset[int]:
    """The slices training never reads: validation and test slices that are not training slices too."""
    return (frozenset(val) | frozenset(test)) - frozenset(train)


def gather(stack: np.ndarray, indices: Sequence[Sequence[int]]) -> np.ndarray:
    """(Z, C, Y, X) inputs from a (S, Y, X) ``stack``: row i holds the slices ``indices[i]``."""
    table = np.asarray(indices, dtype=np.intp)
    return np.ascontiguousarray(stack[table])


def read_span(start: int, stop: int, context: int, n_slices: int) -> tuple[int, int]:
    """The slices ``first:last`` that the inputs of slices ``start:stop`` read (the block's z halo)."""
    return max(0, start - context), min(n_slices, stop + context)


def block_inputs(region: np.ndarray, first: int, start: int, stop: int, context: int, n_slices: int) -> np.ndarray:
    """The (stop - start, 2N + 1, Y, X) inputs of slices ``start:stop`` from ``region``, the slices
    ``first:`` of the stack as :func:`read_span` gives them (prediction's rule)."""
    rows = [[index - first for index in neighbours(z, context, n_slices)] for z in range(start, stop)]
    return gather(region, rows)


def windows(slices: Iterable[np.ndarray], context: int, n_slices: int) -> Iterator[np.ndarray]:
    """Stream the (2N + 1, Y, X) input of each slice of a stack given one (Y, X) slice at a time.

    Holds at most 2N + 1 slices: what prediction of a stack of any depth needs.
    """
    if context == 0:
        yield from (slice_[None] for slice_ in slices)
        return
    held: deque[np.ndarray] = deque()
    first = 0  # the stack index of held[0]
    source = iter(slices)
    for z in range(n_slices):
        _, last = read_span(z, z + 1, context, n_slices)
        while first + len(held) < last:
            held.append(next(source))
        while first < z - context:
            held.popleft()
            first += 1
        yield np.stack([held[index - first] for index in neighbours(z, context, n_slices)])


def centre(inputs: np.ndarray) -> np.ndarray:
    """The slices themselves of (Z, C, Y, X) inputs (channel C // 2); (Z, Y, X) images as they are."""
    return inputs[:, inputs.shape[1] // 2] if inputs.ndim == 4 else inputs


def _check(z: int, context: int, n_slices: int) -> None:
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if not 0 <= z < n_slices:
        raise ValueError(f"slice {z} is outside a stack of {n_slices} slices")
