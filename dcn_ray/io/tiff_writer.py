"""Write TIFF stacks one slice at a time, atomically (a temporary name, renamed when complete)."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import suppress
from pathlib import Path

import numpy as np
import tifffile

from dcn_ray.io.paths import output_file, partial_prefix, remove_stale_partials
from dcn_ray.io.tiff import PathLike

_PAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_BIGTIFF_ABOVE = 3 * 2**30  # stacks are written as BigTIFF above this many pixel bytes


class StackWriter:
    """Write a stack one slice (page) at a time, atomically.

    Pages go to a hidden ``.<name>.partial-<pid>-<random>`` file beside ``path`` (zlib-compressed),
    which is renamed onto ``path`` when the ``with`` block ends cleanly and removed otherwise
    (also on Ctrl-C and SIGTERM); such files left by runs that were killed are removed on entry.
    ``metadata`` (a JSON-serialisable dict) is stored in the first page's ImageDescription,
    in tifffile's JSON form, so ``tifffile.imread`` gives back (Z, Y, X); see read_metadata.
    Pages are uint8, uint16 or float32 as given; bool pages are stored as uint8 0/255.
    Set ``bigtiff`` for stacks that may exceed 4 GB.

    >>> with StackWriter("out.tif", metadata={"model": "best"}) as writer:  # doctest: +SKIP
    ...     for mask in masks:
    ...         writer.write(mask)
    """

    def __init__(self, path: PathLike, *, metadata: dict | None = None, bigtiff: bool = False):
        self.path = Path(path)
        self._metadata = dict(metadata or {})
        try:
            json.dumps(self._metadata)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
        self._bigtiff = bigtiff
        self._tmp: Path | None = None
        self._writer: tifffile.TiffWriter | None = None
        self._page: tuple[tuple[int, ...], np.dtype] | None = None
        self._count = 0

    def __enter__(self) -> StackWriter:
        output_file(self.path)
        remove_stale_partials(self.path)
        self._tmp = self.path.parent / f"{partial_prefix(self.path)}{secrets.token_hex(4)}"
        self._writer = tifffile.TiffWriter(self._tmp, bigtiff=self._bigtiff)
        return self

    def write(self, slice_2d: np.ndarray) -> None:
        """Append one (Y, X) page; every page must have the first one's shape and dtype."""
        if self._writer is None:
            raise ValueError("StackWriter.write must be called inside its with block")
        page = np.asarray(slice_2d)
        if page.dtype == np.bool_:
            page = page.astype(np.uint8) * np.uint8(255)
        if page.ndim != 2 or page.dtype not in _PAGE_DTYPES:
            raise ValueError(f"a page must be 2-D uint8, uint16, float32 or bool, got {page.ndim}-D {page.dtype}")
        if self._page is None:
            self._page = (page.shape, page.dtype)
        elif (page.shape, page.dtype) != self._page:
            raise ValueError(
                f"page {self._count} is {page.shape} {page.dtype}, but the first "
                f"page was {self._page[0]} {self._page[1]}"
            )
        description = self._description(1) if self._count == 0 else None
        self._writer.write(page, photometric="minisblack", compression="zlib", metadata=None, description=description)
        self._count += 1

    def _description(self, n_pages: int) -> str:
        assert self._page is not None
        return json.dumps({"shape": [n_pages, *self._page[0]], "dcn_ray": self._metadata})

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        tmp, writer = self._tmp, self._writer
        assert tmp is not None and writer is not None
        self._writer = None
        try:
            if exc_type is not None:
                with suppress(Exception):
                    writer.close()
                return
            writer.close()
            if self._count == 0:
                raise ValueError(f"{self.path}: no slice was written")
            with tifffile.TiffFile(tmp, mode="r+b") as tif:  # now the number of pages is known
                tif.pages[0].tags["ImageDescription"].overwrite(self._description(self._count))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def needs_bigtiff(nbytes: int) -> bool:
    """Whether a stack of ``nbytes`` (uncompressed) is written as BigTIFF (classic TIFF ends at 4 GB)."""
    return nbytes > _BIGTIFF_ABOVE


def write_stack(path: PathLike, array: np.ndarray, *, metadata: dict | None = None) -> None:
    """Write a whole (Z, Y, X) or (Y, X) array atomically with StackWriter."""
    stack = np.asarray(array)
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    if stack.ndim != 3 or 0 in stack.shape:
        raise ValueError(f"write_stack needs a non-empty (Z, Y, X) array, got shape {stack.shape}")
    with StackWriter(path, metadata=metadata, bigtiff=needs_bigtiff(stack.nbytes)) as writer:
        for page in stack:
            writer.write(page)
