"""Write a prediction as an OME-Zarr image, block by block, from any number of processes.

The store is built in a sibling folder ``.NAME.incomplete`` and renamed onto ``NAME`` only when
every block is in, so a half-written store never appears under the output's name; its attributes
say ``"complete": false`` until then. The image is level ``0`` of a one-level multiscale image
(NGFF 0.4 on zarr v2 by default, for the widest reader support; 0.5 on zarr v3 on request), its
axes and scale copied from the input. An optional label image ``labels/mask`` holds the mask
(0/1); another name and type serve other labels (``suggest``'s ranked tiles: ``labels/suggested``).
The metadata is written with ome-zarr-py, the arrays with zarr.

Blocks are written straight into the store by whoever computed them (:class:`OutputStore` is
plain data that Ray workers open themselves); each block covers whole chunks, so no two writers
share a chunk. After its chunks, a block sets its own element (its own chunk) of the array
``dcn_ray_blocks``, and the SHA-256 of the input values it read in ``dcn_ray_inputs``: that record
is what ``--resume`` reads and checks. Both are removed when the store is done.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcn_ray.errors import InputError
from dcn_ray.io.paths import signals_held, temporary_stem, writable_folder

log = logging.getLogger(__name__)

NGFF_VERSIONS = ("0.4", "0.5")
IMAGE, DONE = "0", "dcn_ray_blocks"
#: Per block: the SHA-256 of the input values it was predicted from (what ``--resume`` checks).
READ = "dcn_ray_inputs"
KEY = "dcn_ray"  # the store's attribute holding provenance, settings and completion
INCOMPLETE = ".incomplete"


@dataclass(frozen=True)
class OutputStore:
    """The store being written: where it is and which arrays it has."""

    path: str
    label: bool = False
    label_name: str = "mask"  # the label image labels/NAME
    label_dtype: str = "uint8"

    def write(self, core: tuple[slice, slice, slice], image: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Write one block's values (and its mask into the label image), whole chunks only."""
        import zarr

        zarr.open_array(store=self.path, path=IMAGE, mode="r+")[core] = image
        if mask is not None:
            self.write_label(core, mask)

    def write_label(self, core: tuple[slice, slice, slice], mask: np.ndarray) -> None:
        """Write values of the label image alone (a store made with ``label=True``)."""
        import zarr

        if self.label:
            label = f"labels/{self.label_name}/0"
            zarr.open_array(store=self.path, path=label, mode="r+")[core] = mask.astype(self.label_dtype)

    def mark_done(self, index: Sequence[int], digest: bytes) -> None:
        """Record that the block at grid position ``index`` is written (after its chunks), and the
        SHA-256 ``digest`` of the input values it was predicted from."""
        import zarr

        zarr.open_array(store=self.path, path=READ, mode="r+")[tuple(index)] = np.frombuffer(digest, np.uint8)
        zarr.open_array(store=self.path, path=DONE, mode="r+")[tuple(index)] = 1

    def digests(self) -> np.ndarray | None:
        """(*grid, 32) uint8: each written block's input digest; None for a store without them."""
        import zarr

        try:
            return zarr.open_array(store=self.path, path=READ, mode="r")[...]
        except Exception:  # written by a dcn-ray that did not record them
            return None

    def done_blocks(self) -> set[tuple[int, int, int]]:
        import zarr

        done = zarr.open_array(store=self.path, path=DONE, mode="r")[...]
        return {tuple(int(i) for i in index) for index in np.argwhere(done)}  # type: ignore[misc]

    @property
    def complete(self) -> bool:
        """Whether every block is in (the record is dropped then): only the rename is left."""
        return bool((stored_settings(Path(self.path)) or {}).get("complete"))


def incomplete_path(final: Path) -> Path:
    """Where the store of ``final`` is built: absolute, for workers whose working folder differs."""
    final = final.absolute()
    return final.parent / f".{temporary_stem(final)}{INCOMPLETE}"


def stored_settings(path: Path) -> dict[str, Any] | None:
    """The ``dcn_ray`` attribute of a store dcn-ray wrote; None for anything else."""
    import zarr

    try:
        attrs = zarr.open_group(store=str(path), mode="r").attrs.asdict()
    except Exception:  # not a zarr group, or unreadable
        return None
    settings = attrs.get(KEY)
    return settings if isinstance(settings, dict) else None


def check_output(final: Path) -> None:
    """Before any work: ``final`` is new, or a store dcn-ray wrote (then replaced), in a writable folder."""
    if final.exists() and stored_settings(final) is None:
        what = "a folder" if final.is_dir() else "a file"
        raise InputError(f"{final}: exists and is {what} that dcn-ray did not write; remove it or choose another name")
    writable_folder(final.parent, final)


def create_store(
    final: Path,
    *,
    shape: tuple[int, int, int],
    chunks: tuple[int, int, int],
    dtype: str,
    grid: tuple[int, int, int],
    axes: Sequence[dict],
    scale: Sequence[float],
    ngff: str,
    label: bool,
    settings: dict[str, Any],
    label_name: str = "mask",
    label_dtype: str = "uint8",
) -> OutputStore:
    """A new, empty store in ``.NAME.incomplete`` (one left by an earlier run is removed first); with
    ``label`` a label image ``labels/<label_name>`` of ``label_dtype`` (mask: 0/1, drawn magenta)."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    if ngff not in NGFF_VERSIONS:
        raise InputError(f"--ngff {ngff}: choose one of {', '.join(NGFF_VERSIONS)}")
    fmt = FormatV04() if ngff == "0.4" else FormatV05()
    path = incomplete_path(final)
    if path.exists():
        log.info("removing %s, left by an earlier run (give --resume to continue one)", path)
        shutil.rmtree(path)
    root = zarr.open_group(store=str(path), mode="w", zarr_format=fmt.zarr_format)
    names = [axis["name"] for axis in axes]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}]
    extra = {"dimension_names": names} if fmt.zarr_format == 3 else {}
    root.create_array(IMAGE, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **extra)
    write_multiscales_metadata(root, datasets, fmt=fmt, axes=list(axes), name=final.name)
    if label:
        labels = root.create_group("labels")
        mask = labels.create_group(label_name)
        mask.create_array("0", shape=shape, chunks=chunks, dtype=label_dtype, fill_value=0, **extra)
        write_multiscales_metadata(mask, datasets, fmt=fmt, axes=list(axes), name=label_name)
        colors = [{"label-value": 1, "rgba": [255, 0, 255, 160]}] if label_name == "mask" else None
        write_label_metadata(labels, label_name, colors=colors, fmt=fmt, source={"image": "../../"})
    root.create_array(DONE, shape=grid, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
    root.create_array(READ, shape=(*grid, 32), chunks=(1, 1, 1, 32), dtype="uint8", fill_value=0)
    root.attrs[KEY] = {**settings, "complete": False}
    return OutputStore(str(path), label, label_name, label_dtype)


def resumable_store(final: Path, settings: dict[str, Any], compare: Sequence[str]) -> OutputStore | None:
    """The ``.NAME.incomplete`` store of an earlier run with the same ``compare`` settings; None if none."""
    path = incomplete_path(final)
    stored = stored_settings(path) if path.exists() else None
    if stored is None:
        return None
    changed = [key for key in compare if stored.get(key) != settings.get(key)]
    if changed:
        differences = "; ".join(
            f"{key} {_short(stored.get(key))} then, {_short(settings.get(key))} now" for key in changed
        )
        raise InputError(
            f"{final}: the unfinished run in {path} had other settings ({differences}); "
            "run without --resume to start again"
        )
    return OutputStore(str(path), bool(stored.get("label_image")))


def _short(value: Any) -> str:
    """A setting as a refusal names it: a digest by its first 12 characters, anything long cut."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:12] + "..." if len(text) > 40 or (isinstance(value, str) and len(value) == 64) else text


def remove_store(store: OutputStore) -> None:
    """Remove an unfinished store that holds no block (a run stopped before its first one)."""
    if store.done_blocks():
        return
    shutil.rmtree(store.path, ignore_errors=True)


def finish_store(store: OutputStore, final: Path) -> None:
    """Drop the block record, mark the store complete and rename it onto ``final``."""
    import zarr

    root = zarr.open_group(store=store.path, mode="r+")
    for record in (DONE, READ):
        if record in root:
            del root[record]
    root.attrs[KEY] = {**root.attrs[KEY], "complete": True}
    with signals_held():
        old = None
        if os.path.lexists(final):
            old = final.parent / f".{temporary_stem(final)}.replaced-{secrets.token_hex(4)}"
            os.rename(final, old)
        os.rename(store.path, final)
    if old is not None:  # a symbolic link is replaced itself, never what it points to
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
