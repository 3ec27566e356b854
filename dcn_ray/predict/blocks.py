"""Cut a (Z, Y, X) volume into blocks aligned to the output chunks, each read with a halo.

Pure arithmetic: no I/O, no torch. A block's *core* is the voxels it writes: a whole number
of output chunks (less at the volume's far edges), so two blocks never write into one chunk
and workers can write concurrently into one store. Its *region* is the rows and columns it
reads: the core widened by ``halo`` pixels on each side, clipped to the slice.

Why the result equals whole-slice inference. A model whose size multiple divides ``align`` (the
pixel grid: :data:`MULTIPLE` = 8 for the DCN and a U-Net up to depth 3, 16 for a U-Net of depth 4,
:func:`grid_for`) is translation-equivariant for shifts by multiples of ``align``, and a pixel
depends on the input within the receptive radius only. So a region must start on the ``align``
grid of the slice (core starts are chunk multiples, chunks and halo are multiples of ``align``),
and, because test-time augmentation flips the region and the flipped grid is anchored at its far
end, a region that ends inside the slice ends at a distance from the slice's end that is a
multiple of ``align`` as well. With ``halo`` at least
the receptive radius, every core pixel then sees exactly what it sees in the whole slice; rows
that a region pads at an inner border lie more than the radius away from its core.

In z, a model of serial-section context N (:mod:`dcn_ray.core.context`) reads N slices beyond the
core on each side (``z_halo``, clipped to the volume: the block's ``planes``); its slices' inputs
are then those of the whole stack, reflection at the stack's ends included. A ``span`` of slices
(``predict --slices 20:28``) starts the z grid at its first slice; the z halo still reads beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dcn_ray.errors import InputError

Shape3 = tuple[int, int, int]
#: The slices (first, stop) of a volume that an output holds; None: all of them.
Span = tuple[int, int] | None
#: The finest pixel grid of tiles, overlaps, chunks, halos and block starts (the DCN's size multiple).
MULTIPLE = 8


def grid_for(size_multiple: int) -> int:
    """The pixel grid blocks lie on for a model of this size multiple: a multiple of both it and 8."""
    return math.lcm(MULTIPLE, size_multiple)


@dataclass(frozen=True)
class Block:
    """One unit of work: the voxels it writes (``core``) and the rows and columns it reads."""

    index: Shape3  # position in the grid of blocks
    core: tuple[slice, slice, slice]  # (z, y, x) in the volume
    rows: slice  # y read: core rows plus the halo, clipped
    cols: slice  # x read
    planes: slice | None = None  # z read: core slices plus the z halo (context), clipped; None: the core's

    @property
    def inner(self) -> tuple[slice, slice]:
        """The core's rows and columns within the region read."""
        _, y, x = self.core
        return (
            slice(y.start - self.rows.start, y.stop - self.rows.start),
            slice(x.start - self.cols.start, x.stop - self.cols.start),
        )

    @property
    def region(self) -> tuple[slice, slice, slice]:
        """The (z, y, x) read: ``planes`` (the core's slices without a z halo), ``rows``, ``cols``."""
        return (self.planes if self.planes is not None else self.core[0], self.rows, self.cols)

    @property
    def voxels(self) -> int:
        return math.prod(s.stop - s.start for s in self.core)


def halo_for(radius: int, align: int = MULTIPLE) -> int:
    """The halo read around a block: the receptive radius rounded up to the ``align`` grid."""
    return math.ceil(radius / align) * align


def default_chunks(shape: Shape3, chunks: Sequence[int] | None = None, align: int = MULTIPLE) -> Shape3:
    """Output chunks, (1, 512, 512) unless given, clipped to the volume; Y and X multiples of ``align``.

    A chunk side that covers its whole axis may be anything; a smaller one must be a multiple of
    ``align`` (block starts, which are chunk multiples, must lie on the model's pixel grid).
    """
    wanted = tuple(chunks) if chunks is not None else (1, 512, 512)
    if len(wanted) != 3 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in wanted):
        raise InputError(f"--chunk {','.join(map(str, wanted))}: give three positive integers Z,Y,X")
    clipped = tuple(min(c, n) for c, n in zip(wanted, shape))
    for axis, (side, length) in enumerate(zip(clipped[1:], shape[1:])):
        if side < length and side % align:
            name = "YX"[axis]
            raise InputError(f"--chunk: the {name} side {side} must be a multiple of {align}")
    return clipped  # type: ignore[return-value]


def default_block(shape: Shape3, chunks: Shape3, *, tile: int, halo: int, block: int | None = None) -> Shape3:
    """The block shape: one chunk deep; in Y and X whole slices when a slice fits in one ``tile``,
    else ``block`` (or the largest chunk multiple whose region, block + 2 * halo, fits a tile)."""
    depth, height, width = shape
    _, chunk_y, chunk_x = chunks
    if block is None and height <= tile and width <= tile:
        return chunks[0], height, width
    sides = []
    for chunk, length in ((chunk_y, height), (chunk_x, width)):
        if block is not None:
            if block < 1 or (block % chunk and block < length):
                raise InputError(f"--block {block}: must be a multiple of the chunk side {chunk}")
            side = block
        else:
            side = max(chunk, (tile - 2 * halo) // chunk * chunk)
        sides.append(min(side, length))
    return chunks[0], sides[0], sides[1]


def _region(start: int, stop: int, length: int, halo: int, align: int) -> slice:
    """Rows read for the core rows ``start:stop`` of an axis of ``length`` (see the module doc)."""
    first = max(0, start - halo)
    last = stop + halo
    if last >= length:
        return slice(first, length)
    return slice(first, min(length, last + (length - last) % align))


def grid(shape: Shape3, block: Shape3) -> Shape3:
    """Blocks along Z, Y and X."""
    return tuple(math.ceil(n / b) for n, b in zip(shape, block))  # type: ignore[return-value]


def block_at(
    index: Sequence[int],
    shape: Shape3,
    block: Shape3,
    halo: int,
    align: int = MULTIPLE,
    z_halo: int = 0,
    span: Span = None,
) -> Block:
    """The block at grid position ``index``, its region on the ``align`` pixel grid, ``z_halo``
    slices more on each side in z (a model's context). ``span`` (first, stop): the slices written,
    a range of the volume (the grid starts at ``first``; the z halo still reads the volume beyond)."""
    first, stop = span if span is not None else (0, shape[0])
    z = slice(first + index[0] * block[0], min(stop, first + (index[0] + 1) * block[0]))
    y, x = (slice(i * b, min(n, (i + 1) * b)) for i, b, n in zip(index[1:], block[1:], shape[1:]))
    core = (z, y, x)
    return Block(
        index=tuple(index),  # type: ignore[arg-type]
        core=core,  # type: ignore[arg-type]
        rows=_region(y.start, y.stop, shape[1], halo, align),
        cols=_region(x.start, x.stop, shape[2], halo, align),
        planes=slice(max(0, z.start - z_halo), min(shape[0], z.stop + z_halo)) if z_halo else None,
    )


def iter_indices(counts: Shape3) -> Iterator[Shape3]:
    """Grid positions in C order (Z slowest)."""
    nz, ny, nx = counts
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                yield z, y, x


def iter_blocks(
    shape: Shape3, block: Shape3, halo: int, align: int = MULTIPLE, z_halo: int = 0, span: Span = None
) -> Iterator[Block]:
    """Every block (of the slices ``span``, default all), in C order of the grid (Z slowest)."""
    first, stop = span if span is not None else (0, shape[0])
    for index in iter_indices(grid((stop - first, *shape[1:]), block)):  # type: ignore[arg-type]
        yield block_at(index, shape, block, halo, align, z_halo, span)
